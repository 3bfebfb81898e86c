"""TensorRT backend: what can be checked without TensorRT (loading errors, the cuda-python wrapper)."""
from __future__ import annotations

import numpy as np
import pytest

from admpff.runtime.contract import DEFAULT_CONTRACT, build_metadata
from admpff.runtime.embedder import ModelLoadError, load_embedder
from admpff.runtime.engine_sidecar import EngineSidecar, write_sidecar
from admpff.runtime.tensorrt_backend import CudaError, TensorRTEmbedder, _check, load_cudart, native_handle

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False


def _engine_with_sidecar(tmp_path, name="reid.engine", **kw):
    engine = tmp_path / name
    engine.write_bytes(b"not a real plan")
    fields = dict(tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7", precision="fp16",
                  onnx_precision="fp32", batch=(1, 8, 32), onnx_sha256="c" * 64,
                  metadata=build_metadata(DEFAULT_CONTRACT, precision="fp32", checkpoint_sha256="ab" * 32),
                  onnx_path="reid.onnx", requested_precision="fp16")
    fields.update(kw)
    write_sidecar(engine, EngineSidecar(**fields))
    return engine


def test_missing_engine_file(tmp_path):
    with pytest.raises(ModelLoadError, match="engine file not found"):
        TensorRTEmbedder(tmp_path / "nope.engine")


def test_missing_sidecar_is_a_clear_load_error(tmp_path):
    engine = tmp_path / "reid.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ModelLoadError, match=r"no sidecar reid\.engine\.json.*admpff-build-engine"):
        load_embedder(engine)


def test_sidecar_without_contract_is_a_load_error(tmp_path):
    engine = _engine_with_sidecar(tmp_path, metadata={"admpff.precision": "fp32"})
    with pytest.raises(ModelLoadError, match="no admpff contract"):
        TensorRTEmbedder(engine)


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_error_says_so(tmp_path):
    engine = _engine_with_sidecar(tmp_path, name="reid.plan")
    with pytest.raises(ModelLoadError) as err:
        load_embedder(engine)  # .plan goes to the TensorRT backend too
    msg = str(err.value)
    assert "TensorRT is not installed here" in msg and "ONNX Runtime" in msg and "\n" not in msg


# -- the cuda-python wrapper: pure logic ------------------------------------------------------------
class _Err:  # stands in for a cudaError_t enum member: .value and .name, as cuda-python's enums have
    def __init__(self, value, name):
        self.value, self.name = value, name


def test_check_unpacks_results():
    ok = _Err(0, "cudaSuccess")
    assert _check((ok,), "cudaSetDevice") is None
    assert _check((ok, 1234), "cudaMalloc") == 1234
    assert _check((ok, 1, 2), "x") == (1, 2)
    assert _check(ok, "bare") is None


def test_check_raises_with_the_call_and_error_name():
    with pytest.raises(CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        _check((_Err(2, "cudaErrorMemoryAllocation"), None), "cudaMalloc")


def test_native_handle_of_plain_ints():
    assert native_handle(0) == 0 and native_handle(12345) == 12345


def test_real_cuda_python_without_a_gpu_raises_a_named_error():
    cudart = load_cudart()
    if cudart is None:
        pytest.skip("cuda-python is not installed here")
    result = cudart.cudaGetDeviceCount()
    if int(getattr(result[0], "value", result[0])) == 0 and result[1] > 0:
        pytest.skip("a GPU is visible here")
    with pytest.raises(CudaError, match=r"cudaGetDeviceCount failed: cudaError\w+ \(.+\)"):
        _check(result, "cudaGetDeviceCount", cudart)


def test_load_cudart_prefers_cuda_bindings():
    cudart = load_cudart()
    if cudart is None:
        pytest.skip("cuda-python is not installed here")
    assert cudart.__name__ in ("cuda.bindings.runtime", "cuda.cudart")
    for name in ("cudaMalloc", "cudaMallocHost", "cudaMemcpyAsync", "cudaStreamCreate", "cudaFreeHost",
                 "cudaGetDeviceProperties", "cudaStreamSynchronize"):
        assert hasattr(cudart, name), name


# -- needs TensorRT and a GPU ------------------------------------------------------------------------
def test_engine_round_trip(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (runs on a Jetson / GPU machine)")
    from test_engine_builder import make_admpff_onnx
    from admpff.export.engine_builder import build_engine_from_onnx

    onnx_path = make_admpff_onnx(tmp_path / "reid.onnx")
    build_engine_from_onnx(onnx_path, tmp_path / "reid.engine", batch="1,2,4")
    with TensorRTEmbedder(tmp_path / "reid.engine") as emb:
        assert emb.max_batch == 4
        images = np.random.default_rng(0).uniform(0, 255, (9, 3, 288, 144)).astype(np.float32)
        out = emb.embed_batch(images, np.zeros(9, np.int32))  # split 4 + 4 + 1
        assert out.shape == (9, DEFAULT_CONTRACT.embedding_dim)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
