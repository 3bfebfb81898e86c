"""One ``Embedder`` interface over inference backends, chosen by file suffix (as BoxMOT does).

``load_embedder("m.onnx")`` -> ONNX Runtime; ``load_embedder("m.engine")`` -> TensorRT.  Either way the
model's own metadata (ONNX ``metadata_props`` or the engine's JSON sidecar) supplies the input
contract, so callers hand over BGR crops of any size and a modality per crop and get L2-normalised
float32 embeddings back.
"""
from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from .contract import InputContract, ModelInfo
from .preprocess import crops_to_batch, validate_crop, EmptyCropError

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model file that cannot be used: missing, corrupt, wrong shape or built for another device."""


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

    def embed_batch(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        """Run preprocessed images (float32 NCHW 0..255), splitting batches above ``max_batch``."""
        n = images.shape[0]
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

    def embed(self, crops: Sequence[np.ndarray], modalities: Sequence[str | int] | str | int) -> np.ndarray:
        """BGR crops (any size) + modality per crop (or one for all) -> float32 [n, dim], unit rows.

        A zero-area crop yields a zero row (cosine 0 with everything, so it never matches) and is
        counted in ``empty_crops`` instead of aborting a whole video frame.
        """
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


class OnnxRuntimeEmbedder(Embedder):
    """ONNX Runtime backend: TensorRT provider, then CUDA, then CPU, whichever the install offers."""

    PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None,
                 provider_options: dict[str, dict] | None = None, intra_op_threads: int | None = None,
                 spin: bool = False):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in self.PREFERRED_PROVIDERS if p in available]
        else:
            missing = [p for p in providers if p not in available]
            if missing:
                raise ModelLoadError(f"ONNX Runtime here lacks {missing}; available: {available}")
        options = [dict((provider_options or {}).get(p, {})) for p in providers]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            so.intra_op_num_threads = intra_op_threads
        if not spin:
            # ORT's idle worker threads spin by default; next to a detector and a decoder on a few cores
            # (a Jetson, this 2-core box) they steal the CPU the other stages need.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=list(providers),
                                                provider_options=options)
        except Exception as exc:  # ORT raises several private exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load {path.name} with ONNX Runtime: {first}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            info = ModelInfo.from_metadata(meta, source=path.name)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        super().__init__(info, path)
        self._check_io()
        self.providers = self.session.get_providers()

    def _check_io(self) -> None:
        c = self.contract
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if set(inputs) != set(c.input_names) or c.output_name not in outputs:
            raise ModelLoadError(f"{self.path.name} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                                 f"expected inputs {list(c.input_names)} and output {c.output_name!r}")
        shape = inputs[c.input_names[0]].shape
        if len(shape) != 4 or list(shape[1:]) != [3, c.height, c.width]:
            raise ModelLoadError(f"{self.path.name} takes images of shape {shape}, but its contract says "
                                 f"[batch, 3, {c.height}, {c.width}]")
        out_shape = outputs[c.output_name].shape
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != self.dim):
            raise ModelLoadError(f"{self.path.name} emits {out_shape}, expected [batch, {self.dim}]")
        if isinstance(shape[0], int):
            self.max_batch = shape[0]

    def _infer(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        names = self.contract.input_names
        return self.session.run([self.contract.output_name], {names[0]: images, names[1]: modality})[0]

    def describe(self) -> str:
        return f"onnxruntime[{self.providers[0]}] {self.path.name} ({self.info.precision})"


def load_embedder(path: str | Path, **options) -> Embedder:
    """Pick the backend by suffix: ``.onnx`` -> ONNX Runtime, ``.engine``/``.plan`` -> TensorRT."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxRuntimeEmbedder(path, **options)
    if suffix in (".engine", ".plan", ".trt"):
        from .tensorrt_backend import TensorRTEmbedder  # imports tensorrt lazily

        return TensorRTEmbedder(path, **options)
    raise ModelLoadError(f"unsupported model file {path.name!r}: expected .onnx or .engine")
