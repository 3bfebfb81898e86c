"""TensorRT control flow without TensorRT: fakes of *documented* TensorRT / cuda-python behaviour only.

TensorRT cannot be installed on this project's machines.  These tests check admpff's own decisions
around calls whose documented results are: ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch)``
returns a bool (False for a cache from another device or version); ``trt.Builder`` / ``trt.Runtime``
raise TypeError when TensorRT's factory returns null (pybind11); ``IRuntime.DLA_core`` selects the DLA
core an engine is deserialised onto.  The real cuda-python (when installed) reproduces a missing driver.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from admpff.export import engine_builder
from admpff.export.engine_builder import EngineBuildError, build_engine_from_onnx, choose_qdq_file
from admpff.runtime import tensorrt_backend
from admpff.runtime.contract import DEFAULT_CONTRACT, build_metadata
from admpff.runtime.embedder import ModelLoadError
from admpff.runtime.engine_sidecar import EngineSidecar, read_sidecar, write_sidecar
from admpff.runtime.tensorrt_backend import CudaError, TensorRTEmbedder, load_cudart

from test_engine_builder import make_admpff_onnx

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
pytestmark = pytest.mark.skipif(HAVE_TRT, reason="real TensorRT is installed: its own tests cover these paths")


class _Cache:
    def __init__(self, blob: bytes):
        self.blob = bytes(blob)

    def serialize(self):
        return self.blob or b"fresh-timing-cache"


class _Config:
    accept_caches = True

    def __init__(self):
        self.cache = None

    def set_memory_pool_limit(self, pool, size): pass
    def set_flag(self, flag): pass
    def add_optimization_profile(self, profile): pass

    def create_timing_cache(self, blob):
        return _Cache(blob)

    def set_timing_cache(self, cache, ignore_mismatch):
        if not self.accept_caches or cache.blob == b"from-another-gpu":
            return False  # documented: False when the cache does not match this device / version
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache  # None when no cache was ever accepted


class _Input:
    def __init__(self, name): self.name = name


class _Network:
    num_inputs = 2

    def get_input(self, i): return _Input(("images", "modality")[i])


class _Profile:
    def set_shape(self, name, lo, opt, hi): pass


def fake_tensorrt(version="10.8.0", builder_error=False, config=_Config):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING, VERBOSE = 1, 0

        def __init__(self, level): pass

    class Builder:
        num_DLA_cores = 0

        def __init__(self, logger):
            if builder_error:  # pybind11's answer to a null IBuilder
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags): return _Network()
        def create_builder_config(self): return config()
        def create_optimization_profile(self): return _Profile()
        def build_serialized_network(self, network, cfg): return b"PLAN"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger): pass
        def parse_from_file(self, path): return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    trt.BuilderFlag = types.SimpleNamespace(FP16=0, INT8=1, GPU_FALLBACK=2)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    return trt


class _GPU:
    def __init__(self, device=0): pass
    def device_properties(self): return {"name": "Fake GPU", "compute_capability": "8.7"}


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(tensorrt_backend, "CudaRuntime", _GPU)


def test_a_timing_cache_from_another_gpu_is_replaced_and_the_engine_kept(tmp_path, monkeypatch, fake_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    onnx_path = make_admpff_onnx(tmp_path / "reid.onnx")
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"from-another-gpu")
    lines = []
    build_engine_from_onnx(onnx_path, tmp_path / "reid.engine", timing_cache=cache, log=lines.append)
    assert (tmp_path / "reid.engine").read_bytes() == b"PLAN" and read_sidecar(tmp_path / "reid.engine")
    assert any("made by another GPU or TensorRT version" in line for line in lines)
    assert not any("(loaded)" in line for line in lines)
    assert cache.read_bytes() == b"fresh-timing-cache"


def test_no_timing_cache_at_all_still_gives_the_engine(tmp_path, monkeypatch, fake_gpu):
    class Refusing(_Config):
        accept_caches = False
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(config=Refusing))
    onnx_path = make_admpff_onnx(tmp_path / "reid.onnx")
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"old")
    lines = []
    build_engine_from_onnx(onnx_path, tmp_path / "reid.engine", timing_cache=cache, log=lines.append)
    assert (tmp_path / "reid.engine").is_file() and read_sidecar(tmp_path / "reid.engine")
    assert any("building without one" in line for line in lines)
    assert cache.read_bytes() == b"old"  # nothing to save, nothing overwritten


def test_builder_factory_returning_null_is_one_line_exit_2(tmp_path, monkeypatch, fake_gpu, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(builder_error=True))
    onnx_path = make_admpff_onnx(tmp_path / "reid.onnx")
    assert engine_builder.main([str(onnx_path), "--out", str(tmp_path / "reid.engine")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not create a builder on GPU 0" in err[0], err
    assert not (tmp_path / "reid.engine").exists()


@pytest.mark.parametrize("version, given, float_dtype, expect, says", [
    ("10.8.0", "admpff.int8.onnx", None, "admpff.int8.fp16.onnx", "strongly typed"),
    ("11.4.1", "admpff.int8.onnx", None, "admpff.int8.fp16.onnx", "strongly typed"),
    ("10.3.0", "admpff.int8.onnx", None, "admpff.int8.onnx", None),          # flags: FP16 flag covers it
    ("8.5.2", "admpff.int8.onnx", None, "admpff.int8.onnx", None),
    ("8.5.2", "admpff.int8.fp16.onnx", "fp16", "admpff.int8.onnx", "INT8 + FP16 flags"),
    ("10.16.0", "admpff.int8.fp16.onnx", "fp16", "admpff.int8.fp16.onnx", None),
])
def test_typed_builds_take_the_fp16_float_qdq_file(tmp_path, version, given, float_dtype, expect, says):
    for name in ("admpff.int8.onnx", "admpff.int8.fp16.onnx"):
        (tmp_path / name).write_bytes(b"x")
    chosen, why = choose_qdq_file(version, tmp_path / given, float_dtype)
    assert chosen.name == expect
    assert (why is None) if says is None else (says in why)


def test_typed_build_without_the_fp16_file_warns_and_dla_keeps_flags(tmp_path):
    (tmp_path / "m.int8.onnx").write_bytes(b"x")
    chosen, why = choose_qdq_file("10.8.0", tmp_path / "m.int8.onnx", None)
    assert chosen.name == "m.int8.onnx" and why.startswith("warning:") and "FP32" in why
    (tmp_path / "m.int8.fp16.onnx").write_bytes(b"x")
    assert choose_qdq_file("10.8.0", tmp_path / "m.int8.onnx", None, dla=0) == (tmp_path / "m.int8.onnx", None)
    only16 = tmp_path / "o" / "m.int8.fp16.onnx"
    only16.parent.mkdir()
    only16.write_bytes(b"x")
    with pytest.raises(EngineBuildError, match="parses opset <= 17"):
        choose_qdq_file("8.5.2", only16, "fp16")


# -- the runtime ---------------------------------------------------------------------------------------
def _engine(tmp_path, dla_core=None):
    engine = tmp_path / "reid.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, EngineSidecar(
        tensorrt_version="10.3.0", gpu_name="Fake GPU", compute_capability="8.7", precision="int8",
        onnx_precision="int8-qdq", batch=(2, 2, 2), onnx_sha256="c" * 64,
        metadata=build_metadata(DEFAULT_CONTRACT, precision="int8-qdq", checkpoint_sha256="ab" * 32),
        onnx_path="reid.int8.onnx", requested_precision="auto", dla_core=dla_core))
    return engine


def _runtime_trt(seen, runtime_error=False, engine=None):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"

    class Logger:
        WARNING = 1

        def __init__(self, level): pass

    class Runtime:
        def __init__(self, logger):
            if runtime_error:
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self.DLA_core = -1

        def deserialize_cuda_engine(self, blob):
            seen["dla_core_at_deserialize"] = self.DLA_core
            return engine

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.TensorIOMode = types.SimpleNamespace(INPUT=0, OUTPUT=1)
    trt.nptype = lambda dtype: dtype
    return trt


@pytest.mark.parametrize("dla", [None, 1])
def test_the_sidecars_dla_core_is_set_before_deserialising(tmp_path, monkeypatch, fake_gpu, dla):
    seen = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _runtime_trt(seen))
    with pytest.raises(ModelLoadError, match="cannot deserialize"):  # the fake returns no engine
        TensorRTEmbedder(_engine(tmp_path, dla_core=dla))
    assert seen["dla_core_at_deserialize"] == (-1 if dla is None else 1)


def test_runtime_factory_returning_null_is_a_model_error(tmp_path, monkeypatch, fake_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", _runtime_trt({}, runtime_error=True))
    with pytest.raises(ModelLoadError, match="could not create a runtime"):
        TensorRTEmbedder(_engine(tmp_path))


class _Engine:
    """The name-based engine API (TensorRT 8.5+) for a 2-input, 1-output embedding engine."""
    names = ("images", "modality", "embedding")
    num_io_tensors = 3

    def get_tensor_name(self, i): return self.names[i]
    def get_tensor_mode(self, name): return 1 if name == "embedding" else 0
    def get_tensor_profile_shape(self, name, profile): return [(2, 3, 288, 144)] * 3
    def get_tensor_dtype(self, name): return np.int32 if name == "modality" else np.float32

    def create_execution_context(self):
        ctx = types.SimpleNamespace(set_input_shape=lambda n, s: True, set_tensor_address=lambda n, p: True)
        ctx.get_tensor_shape = lambda name: (2, DEFAULT_CONTRACT.embedding_dim)
        return ctx


def test_out_of_memory_while_allocating_buffers_is_a_model_error(tmp_path, monkeypatch):
    class NoMemory(_GPU):
        def stream_create(self): return 1
        def stream_destroy(self, s): pass
        def synchronize(self, s): pass
        def malloc_host(self, n): return 0

        def malloc(self, n):  # what _check turns cudaErrorMemoryAllocation into
            raise CudaError("cudaMalloc failed: cudaErrorMemoryAllocation (out of memory)")

        def free_host(self, p): pass
    monkeypatch.setattr(tensorrt_backend, "CudaRuntime", NoMemory)
    monkeypatch.setitem(sys.modules, "tensorrt", _runtime_trt({}, engine=_Engine()))
    with pytest.raises(ModelLoadError, match="cudaErrorMemoryAllocation"):
        TensorRTEmbedder(_engine(tmp_path))


def test_no_cuda_driver_is_a_model_error_with_real_cuda_python(tmp_path, monkeypatch):
    cudart = load_cudart()
    if cudart is None:
        pytest.skip("cuda-python is not installed here (pip install cuda-python)")
    err, count = cudart.cudaGetDeviceCount()
    if int(getattr(err, "value", err)) == 0 and count > 0:
        pytest.skip("a GPU is visible here: cudaSetDevice would succeed")
    monkeypatch.setitem(sys.modules, "tensorrt", _runtime_trt({}))
    with pytest.raises(ModelLoadError) as info:
        TensorRTEmbedder(_engine(tmp_path), device=3)  # before: CudaError escaped as a traceback
    text = str(info.value)
    assert "no usable GPU 3" in text and "cudaSetDevice failed" in text and "\n" not in text


def test_the_gpu_is_made_current_on_each_thread_that_embeds(monkeypatch):
    """CUDA's current device is per host thread (cudaSetDevice's documented scope), and admpff-reid embeds on a
    thread of its own: the engine's GPU must be set on that thread too, once."""
    import threading

    calls = []

    class FakeCudart:
        def cudaSetDevice(self, device):
            calls.append((threading.get_ident(), device))
            return (0,)

    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: FakeCudart())
    cuda = tensorrt_backend.CudaRuntime(device=1)
    cuda.use_on_this_thread()  # the creating thread: already set
    worker = threading.Thread(target=lambda: (cuda.use_on_this_thread(), cuda.use_on_this_thread()))
    worker.start()
    worker.join()
    assert [d for _, d in calls] == [1, 1]
    assert calls[0][0] == threading.get_ident() and calls[1][0] != calls[0][0]
