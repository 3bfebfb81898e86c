"""admpff.runtime: embed person crops and match them, with numpy, OpenCV and one inference backend.

Imports nothing from torch: this package is what runs on a Jetson next to the cameras.
"""
from .contract import DEFAULT_CONTRACT, INFRARED, VISIBLE, InputContract, ModelInfo

__all__ = ["DEFAULT_CONTRACT", "INFRARED", "VISIBLE", "InputContract", "ModelInfo",
           "Embedder", "ModelLoadError", "load_embedder"]


def __getattr__(name: str):
    # Lazy, so `import admpff.runtime` stays light; no backend (onnxruntime, openvino) is imported
    # until load_embedder picks one.
    if name in ("Embedder", "ModelLoadError", "load_embedder"):
        from . import embedder

        return getattr(embedder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
