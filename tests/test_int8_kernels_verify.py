"""Verification with real INT8 kernels (OpenVINO on x86): it reports a figure, shows ONNX Runtime's beside
it, and fails a Q/DQ file that is broken on purpose (one activation scale 100x too small)."""
import platform

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'admpff[runtime]')")
if platform.machine().lower() not in ("x86_64", "amd64"):
    pytest.skip("OpenVINO's CPU INT8 kernels are checked on x86 here", allow_module_level=True)

from admpff.calibration import load_or_build  # noqa: E402
from admpff.export.onnx_export import export_fp32  # noqa: E402
from admpff.export.quantize import quantize_tensorrt_qdq  # noqa: E402
from admpff.export.verify import Fidelity, compare, judge, verify  # noqa: E402
from admpff.export.verify_int8_kernels import BACKEND, real_int8_fidelity  # noqa: E402
from admpff.runtime.embedder import load_embedder  # noqa: E402
from admpff.training.datasets.synthetic import write_sysu  # noqa: E402
from admpff.training.model import ModelConfig, build_model  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def qdq_files(tmp_path_factory):
    base = tmp_path_factory.mktemp("ov")
    data = base / "sysu"
    write_sysu(data, num_ids=8, images_per_cam=2, seed=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=8, backbone="resnet18", height=192, width=96, dim=32, en_rows=2)).eval()
    contract = model.contract()
    fp32 = export_fp32(model, contract, base / "m.onnx", checkpoint_sha256="test")
    crops = load_or_build(base / "calib.npz", [f"sysu:{data}"], num_samples=64, seed=0, contract=contract)
    calib = _subset(crops, 0, 40)
    held = _subset(crops, 40, 64)
    good = quantize_tensorrt_qdq(fp32, base / "m.int8.onnx", calib).path
    broken = base / "broken.int8.onnx"
    _shrink_one_activation_scale(good, broken, factor=100.0)
    return fp32, good, broken, held


def _subset(calset, start, stop):
    from dataclasses import replace
    return replace(calset, images=calset.images[start:stop], modality=calset.modality[start:stop],
                   origins=list(calset.origins[start:stop]))


def _shrink_one_activation_scale(src, dst, factor):
    """Divide the scale of the activation QuantizeLinear in the middle of the graph by ``factor`` (its
    DequantizeLinear partner shares the initializer, so the pair stays consistent and only clips)."""
    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    activation_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
                    and numpy_helper.to_array(inits[n.input[1]]).size == 1]
    target = activation_q[len(activation_q) // 2]
    scale = inits[target.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) / np.float32(factor), scale.name))
    onnx.save(model, str(dst))


def _ort_report(fp32, path, images, modality):
    ref = load_embedder(fp32, backend="onnxruntime").embed_batch(images, modality)
    f = Fidelity("int8-qdq", path.name, "fp32 onnx", len(images),
                 **compare(ref, load_embedder(path, backend="onnxruntime").embed_batch(images, modality)))
    judge(f)
    return f, ref


def test_real_int8_reports_a_figure_and_onnxruntime_beside_it(qdq_files):
    fp32, good, _, held = qdq_files
    ort, ref = _ort_report(fp32, good, held.images, held.modality)
    f = real_int8_fidelity(ort, good, ref, held.images, held.modality)
    assert f.backend == BACKEND
    assert f.details["int8_convolutions"] > 0          # OpenVINO really ran convolutions in int8
    assert f.details["inference_precision"] == "f32"   # the float part pinned: no bf16 error of its own
    assert 0.9 < f.cos_mean <= 1.0 and f.cos_min <= f.cos_mean
    assert f.details["onnxruntime"]["cos_mean"] == pytest.approx(ort.cos_mean)
    # real INT8 and ONNX Runtime's partly-float execution agree closely on a sound file, but not exactly
    assert abs(f.cos_mean - ort.cos_mean) < 0.01
    assert f.max_abs != ort.max_abs


def test_a_scale_100x_too_small_fails_the_real_int8_check(qdq_files):
    fp32, good, broken, held = qdq_files
    ok = real_int8_fidelity(*_with_ref(fp32, good, held), held.images, held.modality)
    bad = real_int8_fidelity(*_with_ref(fp32, broken, held), held.images, held.modality)
    assert not bad.passed and any("cosine" in failure for failure in bad.failures)
    assert bad.cos_mean < ok.cos_mean - 0.02


def _with_ref(fp32, path, held):
    ort, ref = _ort_report(fp32, path, held.images, held.modality)
    return ort, path, ref


def test_verify_judges_int8_qdq_on_real_int8_kernels(qdq_files):
    fp32, good, broken, held = qdq_files
    reports = {f.file: f for f in verify(fp32, {"int8-qdq": broken}, held.images, held.modality)}
    f = reports[broken.name]
    assert f.backend == BACKEND and "onnxruntime" in f.details and not f.passed
