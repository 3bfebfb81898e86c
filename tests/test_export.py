"""admpff-export: the FP32 graph, FP16/INT8 variants, verification and bad input (CPU)."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from admpff.export import cli
from admpff.export.onnx_export import batch_is_dynamic, export_fp32, read_metadata
from admpff.export.qdq_check import check_qdq_model
from admpff.runtime.contract import ModelInfo
from admpff.runtime.embedder import load_embedder
from admpff.runtime.preprocess import normalize_batch
from admpff.training.model import ADMPFFNet, ModelConfig

PARITY_BOUND = 1e-4  # FP32 ONNX vs PyTorch, max abs error on unit-norm embeddings


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = ADMPFFNet(ModelConfig(num_classes=4, backbone="resnet18", height=96, width=48, dim=16, en_rows=1)).eval()
    with torch.no_grad():  # distinct stems, as after training, so the modality input matters
        for p in model.infrared_stem.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    model = tiny_model()
    path = export_fp32(model, model.contract(), d / "m.onnx", checkpoint_sha256="feedbeef")
    return model, path


def images(n, seed=0):
    return (np.random.default_rng(seed).random((n, 3, 96, 48)) * 255).astype(np.float32)


def test_graph_emits_only_the_embedding_with_contract_metadata(exported):
    _, path = exported
    m = onnx.load(str(path))
    assert [o.name for o in m.graph.output] == ["embedding"]
    assert [i.name for i in m.graph.input] == ["images", "modality"]
    assert m.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT32  # TensorRT 8.5 takes int32
    assert batch_is_dynamic(m)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) <= 17
    info = ModelInfo.from_metadata(read_metadata(m))
    assert (info.contract.height, info.contract.width, info.contract.embedding_dim) == (96, 48, 160)
    assert info.precision == "fp32" and info.checkpoint_sha256 == "feedbeef"
    assert [s.name for s in info.contract.embedding][-1] == "en"


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_dynamic_batch_and_parity_with_pytorch(exported, batch):
    model, path = exported
    x = images(batch, seed=batch)
    mod = (np.arange(batch) % 2).astype(np.int32)
    # FP32 parity is ONNX Runtime's job; OpenVINO's CPU default may be bf16 (tests/test_openvino_backend.py)
    got = load_embedder(path, backend="onnxruntime").embed_batch(x, mod)
    with torch.no_grad():
        ref = model(torch.from_numpy(normalize_batch(x, model.contract())), torch.from_numpy(mod).long()).numpy()
    assert got.shape == (batch, 160)
    assert np.abs(got - ref).max() <= PARITY_BOUND


def test_mixed_modality_batch_equals_single_modality_runs(exported):
    _, path = exported
    emb = load_embedder(path)
    x = images(4, seed=9)
    mixed = emb.embed_batch(x, np.array([0, 1, 1, 0], np.int32))
    vis = emb.embed_batch(x[[0, 3]], np.zeros(2, np.int32))
    ir = emb.embed_batch(x[[1, 2]], np.ones(2, np.int32))
    assert np.allclose(mixed[[0, 3]], vis, atol=1e-5) and np.allclose(mixed[[1, 2]], ir, atol=1e-5)
    assert not np.allclose(vis, emb.embed_batch(x[[0, 3]], np.ones(2, np.int32)), atol=1e-3)


def test_fp16_keeps_fp32_io_and_cosine(exported, tmp_path):
    from admpff.export.fp16 import convert_fp16
    _, path = exported
    p16 = convert_fp16(path, tmp_path / "m.fp16.onnx")
    m = onnx.load(str(p16))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    x, mod = images(6, 3), np.array([0, 1] * 3, np.int32)
    a, b = load_embedder(path).embed_batch(x, mod), load_embedder(p16).embed_batch(x, mod)
    assert np.sum(a * b, axis=1).min() >= 0.9999
    assert load_embedder(p16).info.precision == "fp16"


def ckpt(tmp_path, model=None):
    model = model or tiny_model()
    path = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": {"model": model.config.to_dict()}}, path)
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "admpff.export.cli", *map(str, args)], capture_output=True, text=True)


def test_missing_and_corrupt_checkpoint_are_one_line_errors(tmp_path):
    p = run_cli(tmp_path / "none.pt", "--out", tmp_path / "o")
    assert p.returncode == 2 and p.stderr.strip() == f"admpff-export: error: checkpoint not found: {tmp_path / 'none.pt'}"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04 truncated")
    p = run_cli(bad, "--out", tmp_path / "o")
    assert p.returncode == 2 and "corrupt" in p.stderr and p.stderr.count("\n") == 1
    notours = tmp_path / "plain.pt"
    torch.save({"weights": 1}, notours)
    p = run_cli(notours, "--out", tmp_path / "o")
    assert p.returncode == 2 and "not an admpff checkpoint" in p.stderr


def test_int8_without_data_or_with_an_empty_folder_writes_nothing(tmp_path):
    path = ckpt(tmp_path)
    p = run_cli(path, "--out", tmp_path / "o", "--int8")
    assert p.returncode == 2 and "never calibrates on random numbers" in p.stderr
    (tmp_path / "empty").mkdir()
    p = run_cli(path, "--out", tmp_path / "o", "--int8", "--calib-data", tmp_path / "empty")
    assert p.returncode == 2 and "no calibration crops" in p.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.onnx"))


def test_unknown_precision_is_refused(tmp_path):
    p = run_cli(ckpt(tmp_path), "--out", tmp_path / "o", "--precision", "fp32,int4")
    assert p.returncode == 2 and "unknown precision int4" in p.stderr


def test_checkpoint_whose_weights_do_not_fit_its_config(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    state.pop(next(iter(state)))
    path = tmp_path / "broken.pt"
    torch.save({"model": state, "config": {"model": model.config.to_dict()}}, path)
    p = run_cli(path, "--out", tmp_path / "o")
    assert p.returncode == 2 and "does not match its own model configuration" in p.stderr
