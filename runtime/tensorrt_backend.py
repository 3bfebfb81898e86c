"""TensorRT backend: run an ``admpff-build-engine`` engine with the name-based I/O API.

One code path for TensorRT 8.5 (JetPack 5.1) through 11.x: ``num_io_tensors`` / ``get_tensor_name`` /
``get_tensor_mode`` / ``get_tensor_profile_shape``, ``set_input_shape`` and ``set_tensor_address`` for
every I/O tensor, then ``execute_async_v3(stream)``.  Buffers and the stream come from cuda-python
(``cuda.bindings.runtime`` on cuda-python 12.6+/13, ``cuda.cudart`` on older 12.x), as in NVIDIA's
``samples/python/common_runtime.py``.  Pinned host buffers and device buffers are allocated once at the
profile's maximum batch and reused; larger batches are split by :meth:`Embedder.embed_batch`.

``tensorrt`` and ``cuda`` are imported lazily, so importing this module never fails.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from .embedder import Embedder, ModelLoadError
from .engine_sidecar import EngineMismatchError, SidecarError, check_compatible, read_sidecar

log = logging.getLogger(__name__)

__all__ = ["TensorRTEmbedder", "CudaRuntime", "CudaError", "load_cudart"]

TRT_MISSING = ("TensorRT is not installed here (Jetson: JetPack's python3-libnvinfer; desktop: "
               "pip install tensorrt); run the .onnx with ONNX Runtime instead")
CUDA_PYTHON_MISSING = ("cuda-python is not installed (JetPack 5 / CUDA 11.4: pip install 'cuda-python>=11.8,<12'; "
                       "JetPack 6 / CUDA 12: 'cuda-python>=12,<13'; JetPack 7 / CUDA 13: 'cuda-python>=13,<14'); "
                       "the TensorRT backend needs it for device buffers")


class CudaError(RuntimeError):
    """A CUDA runtime call returned an error."""


# ------------------------------------------------------------------------------------------------
# A tiny cuda-python wrapper
# ------------------------------------------------------------------------------------------------
def load_cudart():
    """The cuda-python runtime module, or None.  ``cuda.bindings.runtime`` first (12.6+, the only path in
    13.x, where ``cuda.cudart`` was removed), then the legacy ``cuda.cudart`` (deprecated in 12.9)."""
    try:
        from cuda.bindings import runtime as cudart
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[attr-defined]
        return cudart
    except ImportError:
        return None


def _is_success(err) -> bool:
    value = getattr(err, "value", err)
    try:
        return int(value) == 0
    except (TypeError, ValueError):
        return False


def _check(result, what: str, cudart=None):
    """Unpack a cuda-python result ``(err, *values)`` (or a bare error), raising :class:`CudaError`.

    Returns None, the single value, or a tuple of values.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if not _is_success(err):
        name = getattr(err, "name", str(err))
        detail = ""
        if cudart is not None:
            try:
                ok, text = cudart.cudaGetErrorString(err)
                if _is_success(ok):
                    detail = f" ({text.decode() if isinstance(text, bytes) else text})"
            except Exception:  # the error lookup itself must never mask the real error
                pass
        raise CudaError(f"{what} failed: {name}{detail}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def native_handle(obj) -> int:
    """Integer handle of a cuda-python object (stream); ``int(obj)`` is deprecated in cuda-bindings 13."""
    if isinstance(obj, int):
        return obj
    try:
        from cuda.bindings.utils import get_cuda_native_handle
        return int(get_cuda_native_handle(obj))
    except (ImportError, TypeError, AttributeError):
        return int(obj)


class CudaRuntime:
    """The few CUDA runtime calls the engine needs, each checked."""

    def __init__(self, device: int = 0):
        self.rt = load_cudart()
        if self.rt is None:
            raise ModelLoadError(CUDA_PYTHON_MISSING)
        self.device = int(device)
        self._threads = threading.local()
        self.use_on_this_thread()

    def use_on_this_thread(self) -> None:
        """Make the device current for the calling thread, once per thread: CUDA's current device is per
        host thread, and admpff-reid embeds on a thread of its own (a stream and an execution context of
        GPU N used from a thread whose current device is 0 fail with an invalid-handle error)."""
        if not getattr(self._threads, "device_set", False):
            self.call("cudaSetDevice", self.device)
            self._threads.device_set = True

    def call(self, name: str, *args):
        return _check(getattr(self.rt, name)(*args), name, self.rt)

    def device_properties(self) -> dict:
        prop = self.call("cudaGetDeviceProperties", self.device)
        raw = prop.name
        name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        return {"name": name.strip(), "compute_capability": f"{prop.major}.{prop.minor}"}

    def malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", int(nbytes)))

    def malloc_host(self, nbytes: int) -> int:
        return int(self.call("cudaMallocHost", int(nbytes)))

    def free(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def free_host(self, ptr: int) -> None:
        self.call("cudaFreeHost", ptr)

    def stream_create(self):
        return self.call("cudaStreamCreate")

    def stream_destroy(self, stream) -> None:
        self.call("cudaStreamDestroy", stream)

    def synchronize(self, stream) -> None:
        self.call("cudaStreamSynchronize", stream)

    def h2d(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call("cudaMemcpyAsync", dst, src, int(nbytes), kind, stream)

    def d2h(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call("cudaMemcpyAsync", dst, src, int(nbytes), kind, stream)


class _Binding:
    """One I/O tensor: a pinned host array (numpy view) and a device buffer, both at max shape."""

    def __init__(self, cuda: CudaRuntime, name: str, is_input: bool, dtype: np.dtype, max_shape: tuple[int, ...]):
        self.name, self.is_input, self.dtype = name, is_input, np.dtype(dtype)
        self.max_shape = tuple(int(d) for d in max_shape)
        self.row = int(np.prod(self.max_shape[1:], dtype=np.int64)) if len(self.max_shape) > 1 else 1
        count = max(1, int(np.prod(self.max_shape, dtype=np.int64)))
        self.nbytes = count * self.dtype.itemsize
        self.host_ptr = cuda.malloc_host(self.nbytes)
        self.device_ptr = 0
        try:
            self.device_ptr = cuda.malloc(self.nbytes)
        except Exception:
            cuda.free_host(self.host_ptr)
            raise
        buf = (ctypes.c_byte * self.nbytes).from_address(self.host_ptr)
        self.host = np.frombuffer(buf, dtype=self.dtype, count=count).reshape(self.max_shape)

    def rows_nbytes(self, n: int) -> int:
        return n * self.row * self.dtype.itemsize

    def free(self, cuda: CudaRuntime) -> None:
        self.host = None  # drop the numpy view before the pinned memory goes
        if self.device_ptr:
            cuda.free(self.device_ptr)
            self.device_ptr = 0
        if self.host_ptr:
            cuda.free_host(self.host_ptr)
            self.host_ptr = 0


# ------------------------------------------------------------------------------------------------
# The embedder
# ------------------------------------------------------------------------------------------------
class TensorRTEmbedder(Embedder):
    """Embeddings from a serialized TensorRT engine plus its ``.json`` sidecar."""

    def __init__(self, path: str | Path, device: int = 0, check_device: bool = True):
        path = Path(path)
        self._cuda = None
        self._bindings: dict[str, _Binding] = {}
        self._stream = None
        self.context = self.engine = None
        if not path.is_file():
            raise ModelLoadError(f"engine file not found: {path}")
        try:
            self.sidecar = read_sidecar(path)
            info = self.sidecar.model_info(source=path.name)
        except (SidecarError, ValueError) as exc:
            raise ModelLoadError(str(exc)) from None
        super().__init__(info, path)
        try:
            import tensorrt as trt
        except ImportError:
            raise ModelLoadError(f"cannot load {path.name}: {TRT_MISSING}") from None
        self._trt = trt
        try:  # ModelLoadError if cuda-python is missing; CudaError for a bad device index or no driver
            self._cuda = CudaRuntime(device)
            gpu = self._cuda.device_properties()
        except CudaError as exc:
            raise ModelLoadError(f"cannot load {path.name}: no usable GPU {device} ({exc})") from None
        self.gpu = gpu
        if check_device:
            try:
                check_compatible(self.sidecar, trt.__version__, gpu["name"], gpu["compute_capability"],
                                 engine_path=path)
            except EngineMismatchError as exc:
                raise ModelLoadError(str(exc)) from None
        try:
            self._load(trt, path)
        except CudaError as exc:  # cudaMalloc / cudaMallocHost / cudaStreamCreate
            self.close()
            raise ModelLoadError(f"cannot load {path.name} on GPU {device}: {exc} (out of GPU memory? "
                                 f"a smaller --batch profile needs less)") from None
        except BaseException:
            self.close()
            raise

    def _load(self, trt, path: Path) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        try:
            runtime = trt.Runtime(self._logger)
        except TypeError:  # pybind11 raises this when TensorRT's factory returns null
            runtime = None
        if runtime is None:
            raise ModelLoadError(f"TensorRT {trt.__version__} could not create a runtime for {path.name} "
                                 "(no usable CUDA device or driver, or no GPU memory left)")
        self._runtime = runtime
        if self.sidecar.dla_core is not None:
            # As trtexec --useDLACore does: an engine built for DLA core N must be deserialised onto core N.
            runtime.DLA_core = int(self.sidecar.dla_core)
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelLoadError(f"TensorRT {trt.__version__} cannot deserialize {path.name} (corrupt, or built by "
                                 f"another TensorRT); rebuild it with admpff-build-engine")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ModelLoadError(f"cannot create an execution context for {path.name} (out of GPU memory?)")

        c = self.contract
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if set(inputs) != set(c.input_names) or c.output_name not in outputs:
            raise ModelLoadError(f"{path.name} has inputs {inputs} and outputs {outputs}; expected inputs "
                                 f"{list(c.input_names)} and output {c.output_name!r}")
        self._images, self._modality = c.input_names
        self._output = c.output_name
        lo, _opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self._images, 0))
        if list(hi[1:]) != [3, c.height, c.width]:
            raise ModelLoadError(f"{path.name} takes images {tuple(hi)}, but its contract says "
                                 f"[batch, 3, {c.height}, {c.width}]")
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])

        # Output shape at the maximum batch: set the inputs to their max shapes and ask the context.
        self.context.set_input_shape(self._images, tuple(hi))
        self.context.set_input_shape(self._modality, (self.max_batch,))
        out_shape = tuple(self.context.get_tensor_shape(self._output))
        if len(out_shape) != 2 or out_shape[1] != self.dim:
            raise ModelLoadError(f"{path.name} emits {out_shape}, expected [batch, {self.dim}]")

        self._stream = self._cuda.stream_create()
        for name, shape in ((self._images, hi), (self._modality, (self.max_batch,)), (self._output, out_shape)):
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._bindings[name] = _Binding(self._cuda, name, name in inputs, dtype, shape)
        for name in names:  # every I/O tensor needs an address before execute_async_v3
            binding = self._bindings.get(name)
            if binding is None:
                raise ModelLoadError(f"{path.name} has an unexpected I/O tensor {name!r}")
            self.context.set_tensor_address(name, binding.device_ptr)

    def _infer(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        n = images.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds the engine's maximum {self.max_batch}")
        b = max(n, self.min_batch)  # a static-batch (e.g. DLA) engine: pad with zeros
        img, mod, out = (self._bindings[k] for k in (self._images, self._modality, self._output))
        img.host[:n] = images
        mod.host[:n] = modality
        if b > n:
            img.host[n:b] = 0
            mod.host[n:b] = 0
        c = self.contract
        self.context.set_input_shape(self._images, (b, 3, c.height, c.width))
        self.context.set_input_shape(self._modality, (b,))
        cuda, stream = self._cuda, self._stream
        cuda.use_on_this_thread()
        cuda.h2d(img.device_ptr, img.host_ptr, img.rows_nbytes(b), stream)
        cuda.h2d(mod.device_ptr, mod.host_ptr, mod.rows_nbytes(b), stream)
        if not self.context.execute_async_v3(native_handle(stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.path.name}")
        cuda.d2h(out.host_ptr, out.device_ptr, out.rows_nbytes(b), stream)
        cuda.synchronize(stream)
        return out.host[:n].astype(np.float32, copy=True)

    def close(self) -> None:
        """Free the buffers, the stream and the engine (idempotent)."""
        cuda = self._cuda
        if cuda is not None:
            if self._stream is not None:
                try:
                    cuda.synchronize(self._stream)
                except Exception:
                    pass
            for binding in self._bindings.values():
                try:
                    binding.free(cuda)
                except Exception as exc:
                    log.debug("freeing %s: %s", binding.name, exc)
            if self._stream is not None:
                try:
                    cuda.stream_destroy(self._stream)
                except Exception:
                    pass
        self._bindings = {}
        self._stream = None
        self.context = None
        self.engine = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        s = self.sidecar
        dla = f", DLA {s.dla_core}" if s.dla_core is not None else ""
        return (f"tensorrt[{s.tensorrt_version}] {self.path.name} ({s.precision}, batch <= {s.max_batch}{dla}, "
                f"{s.gpu_name})")
