"""One ``Embedder`` interface over inference backends, each backend one module, chosen by a small table.

``load_embedder("m.onnx")`` picks a backend for the file (see :func:`choose_backend`: TensorRT for
engines, OpenVINO for ONNX/IR on x86 CPUs, ONNX Runtime when it has a GPU provider or elsewhere);
``load_embedder("m.onnx", backend="onnxruntime")`` forces one.  Whatever runs it, the model's own
metadata (ONNX ``metadata_props``, OpenVINO's ``rt_info["framework"]``, or the engine's JSON sidecar)
supplies the input contract, so callers hand over BGR crops of any size and a modality per crop and
get L2-normalised float32 embeddings back.

Backends are registered with :func:`register_backend` by name, file suffixes and URL schemes, and a
``"module:Class"`` loader that is imported only when that backend is chosen: this module imports
neither onnxruntime, openvino, tensorrt nor tritonclient.
"""
from __future__ import annotations

import abc
import importlib
import importlib.util
import inspect
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from .contract import InputContract, ModelInfo
from .preprocess import crops_to_batch, validate_crop, EmptyCropError

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model file that cannot be used: missing, corrupt, wrong shape or built for another device."""


def as_crop_list(crops) -> list[np.ndarray]:
    """Normalise ``embed``'s first argument to a list of crops.

    A bare ndarray is read by its rank: 2-D (grayscale) or 3-D (HxWxC) is one crop, 4-D is a stack of
    crops.  Anything else is refused with a message instead of being iterated row by row.
    """
    if isinstance(crops, np.ndarray):
        if crops.ndim in (2, 3):
            return [crops]
        if crops.ndim == 4:
            return list(crops)
        raise ValueError(f"crops array has shape {crops.shape}: expected one HxWx3 crop, an NxHxWx3 "
                         "stack, or a list of crops")
    if isinstance(crops, (str, bytes)) or not hasattr(crops, "__len__"):
        raise TypeError(f"crops is {type(crops).__name__}: expected a list of HxWx3 BGR arrays")
    return list(crops)


class Embedder(abc.ABC):
    """Turns person crops into L2-normalised embeddings.

    Subclasses implement ``_infer`` for one already-preprocessed batch no larger than ``max_batch``.
    """

    #: largest batch the backend accepts in one call (None: unlimited)
    max_batch: int | None = None

    def __init__(self, info: ModelInfo, path: Path):
        self.info = info
        self.path = Path(path)
        self.empty_crops = 0  # zero-area crops seen (embedded as zero vectors)

    @property
    def contract(self) -> InputContract:
        return self.info.contract

    @property
    def dim(self) -> int:
        return self.contract.embedding_dim

    @abc.abstractmethod
    def _infer(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        """images float32 [n,3,H,W] 0..255, modality int32 [n] -> float32 [n, dim]."""

    def _modalities(self, modalities, n: int) -> np.ndarray:
        if isinstance(modalities, (str, int, np.integer)):
            modalities = [modalities] * n
        if len(modalities) != n:
            raise ValueError(f"{n} crops but {len(modalities)} modalities")
        return np.asarray([self.contract.modality_code(m) for m in modalities], np.int32)

    @property
    def fixed_modality(self) -> str | None:
        """The modality a single-input export was fixed to (``admpff.fixed_modality``), else None."""
        return self.info.raw.get("admpff.fixed_modality") or None

    def embed_batch(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        """Run preprocessed images (float32 NCHW 0..255), splitting batches above ``max_batch``."""
        n = images.shape[0]
        fixed = self.fixed_modality
        if fixed is not None and n and np.any(np.asarray(modality) != self.contract.modality_code(fixed)):
            raise ValueError(f"{self.path.name} is fixed to {fixed} crops (a single-input export); embed the "
                             "other modality with the two-input model or that modality's own file")
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        step = self.max_batch or n
        parts = [self._infer(np.ascontiguousarray(images[i:i + step], np.float32),
                             np.ascontiguousarray(modality[i:i + step], np.int32))
                 for i in range(0, n, step)]
        out = np.concatenate(parts, axis=0).astype(np.float32, copy=False)
        if out.shape != (n, self.dim):
            raise ModelLoadError(f"{self.path.name} returned shape {out.shape}, expected ({n}, {self.dim})")
        # The graph already L2-normalises; renormalise so reduced-precision outputs are exactly unit.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray,
              modalities: Sequence[str | int] | str | int) -> np.ndarray:
        """BGR crops (any size) + modality per crop (or one for all) -> float32 [n, dim], unit rows.

        ``crops`` is a list of HxWx3 arrays or an NxHxWx3 array.  A single image given as one HxWx3
        (or HxW grayscale) array is one crop and gives one row, never one row per pixel row.
        A zero-area crop yields a zero row (cosine 0 with everything, so it never matches) and is
        counted in ``empty_crops`` instead of aborting a whole video frame.
        """
        crops = as_crop_list(crops)
        n = len(crops)
        codes = self._modalities(modalities, n)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        valid = []
        for i, crop in enumerate(crops):
            try:
                validate_crop(crop, i)
                valid.append(i)
            except EmptyCropError:
                self.empty_crops += 1
        out = np.zeros((n, self.dim), np.float32)
        if valid:
            batch = crops_to_batch([crops[i] for i in valid], self.contract)
            out[valid] = self.embed_batch(batch, codes[valid])
        return out

    def describe(self) -> str:
        return f"{type(self).__name__}({self.path.name}, precision={self.info.precision})"


# ------------------------------------------------------------------------------------------------
# Backend registry
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """One inference backend: how files and URIs map to it, and where its class lives."""

    name: str
    loader: str                       # "package.module:Class", imported only when chosen
    suffixes: tuple[str, ...] = ()    # lower-case, with the dot
    schemes: tuple[str, ...] = ()     # URL schemes of model URIs, e.g. "grpc"
    requires: str | None = None       # top-level module whose presence means "installed"
    threads_option: str | None = "threads"  # the keyword its class takes for a CPU thread count
    probe: str | None = None          # "module:function(path) -> reason or None": files ``auto`` must not give it

    def installed(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def refuses(self, path: str | Path) -> str | None:
        if not self.probe:
            return None
        module_name, _, function = self.probe.partition(":")
        try:
            return getattr(importlib.import_module(module_name), function)(path)
        except ImportError:
            return None

    def load_class(self) -> type[Embedder]:
        module_name, _, class_name = self.loader.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, *, loader: str, suffixes: Sequence[str] = (), schemes: Sequence[str] = (),
                     requires: str | None = None, threads_option: str | None = "threads",
                     probe: str | None = None) -> Backend:
    """Add (or replace) a backend.  ``loader`` is ``"module:Class"``; the class takes the model path or
    URI as its first argument and raises :class:`ModelLoadError` for anything it cannot run."""
    backend = Backend(name=name, loader=loader, suffixes=tuple(x.lower() for x in suffixes),
                      schemes=tuple(x.lower() for x in schemes), requires=requires,
                      threads_option=threads_option, probe=probe)
    _BACKENDS[name] = backend
    return backend


def backends() -> dict[str, Backend]:
    """The registered backends by name, in registration order."""
    return dict(_BACKENDS)


# The table.  Order matters only for listing; ``choose_backend`` holds the "auto" rule.
register_backend("onnxruntime", loader="admpff.runtime.onnxruntime_backend:OnnxRuntimeEmbedder",
                 suffixes=(".onnx",), requires="onnxruntime")
register_backend("openvino", loader="admpff.runtime.openvino_backend:OpenVINOEmbedder",
                 suffixes=(".onnx", ".xml"), requires="openvino",
                 probe="admpff.runtime.openvino_backend:unsupported_reason")
register_backend("tensorrt", loader="admpff.runtime.tensorrt_backend:TensorRTEmbedder",
                 suffixes=(".engine", ".plan", ".trt"), requires="tensorrt", threads_option=None)
# A model served by Triton Inference Server (admpff-serve, or an admpff-export --triton repository).
register_backend("triton", loader="admpff.runtime.triton_backend:TritonEmbedder",
                 schemes=("grpc", "http"), requires="tritonclient", threads_option=None)

BACKEND_CHOICES = ("auto", *_BACKENDS)


def _scheme(path_or_uri: str | Path) -> str:
    if isinstance(path_or_uri, Path):
        return ""
    scheme = urlparse(str(path_or_uri)).scheme.lower()
    return scheme if len(scheme) > 1 else ""  # "C:\model.onnx" is a path, not a URI


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def _ort_has_gpu() -> bool:
    from .onnxruntime_backend import GPU_PROVIDERS, available_providers  # imports nothing heavy

    return any(p in available_providers() for p in GPU_PROVIDERS)


def choose_backend(path_or_uri: str | Path, backend: str = "auto", options: dict | None = None) -> Backend:
    """The backend that runs ``path_or_uri``.

    An explicit name must exist and accept the file.  ``auto``: a URI goes to the backend registered
    for its scheme; a suffix with one backend goes to it (``.engine`` -> TensorRT, ``.xml`` ->
    OpenVINO); for ``.onnx`` the rule is what measured fastest (README, "Backends"): ONNX Runtime when
    it has a GPU provider (TensorRT/CUDA), else OpenVINO on an x86 CPU when it is installed, else ONNX
    Runtime; a file a backend's probe refuses (the QOperator CPU-INT8 file, for OpenVINO) goes to the
    other.  Options only one candidate accepts (``providers=`` for ONNX Runtime, ``precision=`` for
    OpenVINO) narrow the choice to that candidate.
    """
    scheme = _scheme(path_or_uri)
    suffix = "" if scheme else Path(str(path_or_uri)).suffix.lower()
    if backend != "auto":
        if backend not in _BACKENDS:
            raise ModelLoadError(f"unknown backend {backend!r}; choose from {', '.join(BACKEND_CHOICES)}")
        chosen = _BACKENDS[backend]
        accepted = chosen.schemes if scheme else chosen.suffixes
        if accepted and (scheme or suffix) not in accepted:
            what = f"{scheme}:// URIs" if scheme else f"{suffix or 'suffix-less'} files"
            raise ModelLoadError(f"backend {backend!r} does not run {what} "
                                 f"(it takes {', '.join(accepted)})")
        return chosen
    if scheme:
        candidates = [b for b in _BACKENDS.values() if scheme in b.schemes]
        if not candidates:
            known = sorted({s for b in _BACKENDS.values() for s in b.schemes})
            raise ModelLoadError(f"no backend serves {scheme}:// model URIs"
                                 + (f" (known schemes: {', '.join(known)})" if known else ""))
        return candidates[0]
    candidates = [b for b in _BACKENDS.values() if suffix in b.suffixes]
    if not candidates:
        known = sorted({s for b in _BACKENDS.values() for s in b.suffixes})
        raise ModelLoadError(f"unsupported model file {Path(str(path_or_uri)).name!r}: expected "
                             f"{', '.join(known)} or a model URI")
    if len(candidates) == 1:
        return candidates[0]
    installed = [b for b in candidates if b.installed()] or candidates
    if len(installed) > 1:  # e.g. ONNX Runtime's QOperator CPU-INT8 file is not OpenVINO's to run
        installed = [b for b in installed if not b.refuses(path_or_uri)] or installed
    specific = set(options or {}) - {"threads"}
    if specific:
        fitting = [b for b in installed if specific <= _accepted_options(b)]
        if fitting:
            installed = fitting
    names = {b.name: b for b in installed}
    if len(names) == 1:
        return installed[0]
    if "onnxruntime" in names and _ort_has_gpu():
        return names["onnxruntime"]
    if "openvino" in names and _is_x86():
        return names["openvino"]
    return names.get("onnxruntime", installed[0])


def _accepted_options(backend: Backend) -> set[str]:
    try:
        params = inspect.signature(backend.load_class().__init__).parameters
    except (ImportError, AttributeError):
        return set()
    return {name for name in params if name != "self"}


def load_embedder(path_or_uri: str | Path, backend: str = "auto", *, threads: int | None = None,
                  **options) -> Embedder:
    """An :class:`Embedder` for a model file or URI.

    ``backend``: ``"auto"`` (see :func:`choose_backend`) or a registered name (``onnxruntime``,
    ``openvino``, ``tensorrt``, ...).  ``threads`` is the CPU thread count for backends that take
    one (ignored by TensorRT); other ``options`` go to the backend's class as they are.
    Raises :class:`ModelLoadError` with a one-line message for anything that cannot be run.
    """
    chosen = choose_backend(path_or_uri, backend, {**options, **({"threads": threads} if threads else {})})
    # A backend whose package is missing is still constructed: its class says, in one line, what to
    # install (each backend module imports its package only inside the class).
    try:
        cls = chosen.load_class()
    except ImportError as exc:
        raise ModelLoadError(f"backend {chosen.name!r} cannot be imported: {exc}") from None
    if threads and chosen.threads_option:
        options[chosen.threads_option] = threads
    unknown = set(options) - _accepted_options(chosen)
    if unknown and not _takes_kwargs(cls):
        raise ModelLoadError(f"backend {chosen.name!r} takes no option {', '.join(sorted(unknown))}")
    target = path_or_uri if _scheme(path_or_uri) else Path(path_or_uri)
    return cls(target, **options)


def _takes_kwargs(cls) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())


def __getattr__(name: str):
    # Kept importable from here for existing callers; the class lives in its backend module.
    if name == "OnnxRuntimeEmbedder":
        from .onnxruntime_backend import OnnxRuntimeEmbedder

        return OnnxRuntimeEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
