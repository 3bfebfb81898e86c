"""The deployed runtime and the training evaluator agree on the same image files.

Training evaluation: files -> image cache (cv2.imread + resize_crop) -> PyTorch model.
Runtime: files read as BGR crops -> Embedder.embed (preprocessing from the ONNX metadata only) -> ORT.
Same embeddings within the FP32 export bound, so accuracy measured in training is what the runtime gets.
"""
import importlib.util
import cv2

import numpy as np
import torch

from admpff.export.onnx_export import export_fp32
from admpff.runtime.embedder import load_embedder
from admpff.training.datasets.synthetic import write_sysu
from admpff.training.datasets.sysu import SYSUMM01
from admpff.training.features import cache_images, extract_features
from admpff.training.model import ADMPFFNet, ModelConfig


def test_runtime_matches_training_evaluator_on_real_files(tmp_path):
    torch.manual_seed(0)
    model = ADMPFFNet(ModelConfig(num_classes=5, backbone="resnet18", height=96, width=48, dim=16, en_rows=1)).eval()
    with torch.no_grad():
        for p in model.infrared_stem.parameters():
            p.add_(0.2 * torch.randn_like(p))
    contract = model.contract()
    onnx_path = export_fp32(model, contract, tmp_path / "m.onnx", checkpoint_sha256="parity", do_simplify=False)
    # generated images come in several sizes, so resizing is exercised
    write_sysu(tmp_path / "sysu", num_ids=5, images_per_cam=2, seed=3, image_size=None)
    query = SYSUMM01(tmp_path / "sysu").query("all")  # infrared crops
    paths = list(query.paths)[:8]
    cached = cache_images(paths, str(tmp_path / "cache"), "q", contract, progress=False)
    trained_view = extract_features(model, cached.images, 1, contract=contract)

    crops = [cv2.imread(p, cv2.IMREAD_COLOR) for p in paths]
    assert len({c.shape for c in crops}) > 1
    # Every FP32 CPU backend, pinned to f32: `auto` may pick OpenVINO at bf16 on AMX CPUs, which is
    # fast but not an FP32 parity check.
    for backend, options in (("onnxruntime", {}), ("openvino", {"precision": "f32"})):
        if backend == "openvino" and importlib.util.find_spec("openvino") is None:
            continue
        deployed = load_embedder(onnx_path, backend=backend, **options).embed(crops, "infrared")
        assert np.abs(deployed - trained_view).max() <= 1e-4, backend
        assert np.all(np.sum(deployed * trained_view, axis=1) > 0.99999), backend
