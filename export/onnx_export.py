"""PyTorch -> ONNX: the graph emits only the concatenated, L2-normalised test embedding.

Inputs are ``images`` float32 [batch, 3, H, W] RGB 0..255 (normalisation is inside the graph, so the
runtime only resizes and reorders) and ``modality`` int32 [batch]; int32 and float32 are the input
types every TensorRT from 8.5 on accepts.  The batch dimension stays symbolic after simplification.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from admpff.runtime.atomic import write_bytes
from admpff.runtime.contract import InputContract, build_metadata

from .checkpoint_io import ExportError

DEFAULT_OPSET = 17  # the newest opset TensorRT 8.5 (JetPack 5) parses


class EmbeddingGraph(torch.nn.Module):
    """What is traced: normalise in-graph, then the model's eval embedding."""

    def __init__(self, model: torch.nn.Module, contract: InputContract):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(contract.mean_255).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(contract.std_255).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.model.embed((images - self.mean) / self.std, modality)


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def batch_is_dynamic(model: onnx.ModelProto) -> bool:
    """True when every graph input and output keeps a symbolic first dimension."""
    for vi in list(model.graph.input) + list(model.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if not dim0.dim_param:
            return False
    return True


def save_onnx_atomic(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write next to the target and rename, so a crash never leaves a half-written model."""
    return write_bytes(path, model.SerializeToString())


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim clean-up (constant folding, dead nodes); refuse a result that lost the dynamic batch."""
    import onnxslim

    slim = onnxslim.slim(model)
    if not batch_is_dynamic(slim):
        warnings.warn("onnxslim fixed the batch dimension; keeping the unsimplified graph")
        return model
    return slim


def export_fp32(model, contract: InputContract, out_path: str | Path, *, checkpoint_sha256: str,
                opset: int = DEFAULT_OPSET, do_simplify: bool = True, extra_metadata: dict | None = None) -> Path:
    if opset < 13:
        raise ExportError(f"opset {opset} is too old: per-channel Q/DQ needs opset >= 13")
    graph = EmbeddingGraph(model, contract).eval()
    images = torch.rand(2, 3, contract.height, contract.width) * 255
    modality = torch.tensor([0, 1], dtype=torch.int32)
    names_in, name_out = list(contract.input_names), contract.output_name
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks folded to constants
            # The TorchScript exporter: it emits opset 13-17 directly, which TensorRT 8.5 needs.
            torch.onnx.export(graph, (images, modality), str(raw), dynamo=False, opset_version=opset,
                              input_names=names_in, output_names=[name_out], do_constant_folding=True,
                              dynamic_axes={names_in[0]: {0: "batch"}, names_in[1]: {0: "batch"},
                                            name_out: {0: "batch"}})
        proto = onnx.load(str(raw))
    if do_simplify:
        proto = simplify(proto)
    if not batch_is_dynamic(proto):
        raise ExportError("exported graph lost its dynamic batch dimension")
    set_metadata(proto, build_metadata(contract, precision="fp32", checkpoint_sha256=checkpoint_sha256,
                                       extra=extra_metadata))
    onnx.checker.check_model(proto)
    return save_onnx_atomic(proto, out_path)
