"""ONNX Runtime backend: TensorRT provider, then CUDA, then CPU, whichever the install offers.

``onnxruntime`` is imported when an embedder is made, never at module import, so the runtime package
imports on a Jetson that has only TensorRT.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .contract import ModelInfo
from .embedder import Embedder, ModelLoadError

__all__ = ["OnnxRuntimeEmbedder", "GPU_PROVIDERS", "available_providers"]

#: providers that run on a GPU; their presence makes ``load_embedder(..., backend="auto")`` pick ORT
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_providers() -> list[str]:
    """ONNX Runtime's providers in this install, or [] when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OnnxRuntimeEmbedder(Embedder):
    """ONNX Runtime backend: TensorRT provider, then CUDA, then CPU, whichever the install offers."""

    PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None,
                 provider_options: dict[str, dict] | None = None, intra_op_threads: int | None = None,
                 spin: bool = False, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError(f"cannot load {Path(path).name}: onnxruntime is not installed "
                                 "(pip install 'admpff[runtime]')") from None

        intra_op_threads = intra_op_threads or threads  # ``threads`` is load_embedder's common name
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
        # zip: a single-input (modality-fixed) export takes only the images
        return self.session.run([self.contract.output_name], dict(zip(names, (images, modality))))[0]

    def describe(self) -> str:
        return f"onnxruntime[{self.providers[0]}] {self.path.name} ({self.info.precision})"
