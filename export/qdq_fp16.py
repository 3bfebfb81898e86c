"""The INT8 Q/DQ file with an FP16 float part, for strongly typed TensorRT builds (10.4+ and 11.x).

A strongly typed build takes every precision from the ONNX tensor types, so in the FP32-float Q/DQ file
each layer outside a Q/DQ pair (residual adds left in float, pooling, the glue between blocks) runs in
FP32, where TensorRT 8.5-10.3, built with INT8 + FP16 flags, run it in FP16.  This file makes the ResNet
body FP16 the way ``fp16.py`` does for the FP16 file, Q/DQ pairs included: their scales become FP16, so
each DequantizeLinear emits FP16 straight into its Conv (the form NVIDIA Model Optimizer writes for
TensorRT with ``--high_precision_dtype fp16``).  FP16 scales need opset 19, which every TensorRT that
builds strongly typed parses (10.x reads opset 19+); TensorRT 8.5 (JetPack 5), which parses only up to
opset 17, never builds this file: it takes ``<name>.int8.onnx`` (FP32 scales, opset 17) with flags.
Keeping FP32 scales here instead would put a Cast between every DequantizeLinear and its Conv, a pattern
our Q/DQ check (and TensorRT's documented Q/DQ fusions) no longer see as a quantized convolution.
The normalisation and the embedding head stay FP32, joined by Casts.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from admpff.runtime.contract import ModelInfo, build_metadata

from .checkpoint_io import ExportError
from .fp16 import to_fp16
from .onnx_export import read_metadata, save_onnx_atomic, set_metadata
from .qdq_check import FP16_SCALE_OPSET, QDQ_OPS

#: metadata key saying what the float part of a Q/DQ file is ("fp16" on this file)
FLOAT_DTYPE_KEY = "admpff.float_dtype"
_BASE_KEYS = ("admpff.contract", "admpff.precision", "admpff.checkpoint_sha256", "admpff.version",
              "admpff.tensorrt_compatible", "admpff.embedding_dim")


def _qdq_feeding(model: onnx.ModelProto, body: set[str]) -> set[str]:
    """Q/DQ nodes whose every consumer is in the body (repeated, so a Q -> DQ -> Conv chain joins whole)."""
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    graph_outputs = {o.name for o in model.graph.output}
    joined: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if node.op_type not in QDQ_OPS or node.name in body or node.name in joined:
                continue
            users = [c for out in node.output for c in consumers.get(out, [])]
            if users and not any(o in graph_outputs for o in node.output) and all(u in body or u in joined for u in users):
                joined.add(node.name)
                changed = True
    return joined


def convert_qdq_fp16(int8_path: str | Path, out_path: str | Path) -> Path:
    """``<name>.int8.onnx`` -> ``<name>.int8.fp16.onnx``: the same Q/DQ nodes, FP16 body and scales, opset 19."""
    model = onnx.load(str(int8_path))
    meta = read_metadata(model)
    info = ModelInfo.from_metadata(meta, source=str(int8_path))
    if info.precision != "int8-qdq":
        raise ExportError(f"{int8_path} is {info.precision}; the FP16-float Q/DQ file starts from the INT8 Q/DQ file")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < FP16_SCALE_OPSET:
        from onnx import version_converter
        model = version_converter.convert_version(model, FP16_SCALE_OPSET)
    converted = to_fp16(model, extra_body=_qdq_feeding)
    extra = {k: v for k, v in meta.items() if k.startswith("admpff.") and k not in _BASE_KEYS}
    extra[FLOAT_DTYPE_KEY] = "fp16"
    extra["admpff.for"] = "strongly typed TensorRT (10.4+, 11.x); TensorRT 8.5-10.3 take the .int8.onnx with flags"
    set_metadata(converted, build_metadata(info.contract, precision="int8-qdq",
                                           checkpoint_sha256=info.checkpoint_sha256, extra=extra))
    onnx.checker.check_model(converted)
    return save_onnx_atomic(converted, out_path)
