"""FP32 ONNX -> FP16 internals with FP32 inputs/outputs, for strongly typed TensorRT (10.x, 11.x).

TensorRT 8.5/8.6/10.3 take the FP32 file with the FP16 builder flag instead (see engine_builder).

The conversion is explicit about three regions of the embedding graph:

* pre-processing (the in-graph ImageNet normalisation of 0..255 pixels) stays FP32: FP16's spacing at
  255 is 0.125, which would quantise the input itself;
* the ResNet body (every node downstream of the first convolution, up to the stripe pooling) becomes
  FP16: its float initializers are converted and a Cast enters it;
* the embedding head (stripe pooling, 1x1 reductions, concatenation, L2 norm: a sum of squares over
  5120 values can overflow FP16) stays FP32, entered through a Cast back.

onnxconverter-common's generic converter mis-typed the casts at that head boundary (ORT refused the
result), so the graph is rewritten here with plain onnx.helper calls and checked by ORT in tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from admpff.runtime.contract import ModelInfo, build_metadata

from .checkpoint_io import ExportError
from .graph_regions import downstream, embedding_head_nodes
from .onnx_export import read_metadata, save_onnx_atomic, set_metadata


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    floats = {vi.name for vi in infos if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats |= {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    return floats


def body_nodes(model: onnx.ModelProto) -> set[str]:
    """Nodes downstream of the first convolutions, excluding the embedding head."""
    head = embedding_head_nodes(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in head]
    return downstream(model, convs) - head


def to_fp16(model: onnx.ModelProto, extra_body=None) -> onnx.ModelProto:
    """``extra_body(model, body) -> set of node names``: more nodes to convert with the body (the Q/DQ
    pairs that feed it, for the FP16-float INT8 file)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # work on a copy
    body = body_nodes(model)
    if extra_body is not None:
        body = body | extra_body(model, body)
    floats = _float_tensors(model)
    producer = {out: n.name for n in model.graph.node for out in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    consumers_outside_body = {name for n in model.graph.node if n.name not in body for name in n.input}

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}_as_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to,
                                              name=f"cast_{len(casts)}_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"))
        return casts[key]

    converted: set[str] = set()
    for node in model.graph.node:
        in_body = node.name in body
        for i, name in enumerate(node.input):
            if not name or name not in floats:
                continue
            if in_body:
                if name in inits:
                    if name in consumers_outside_body:
                        node.input[i] = cast(name, TensorProto.FLOAT16)
                    elif name not in converted:
                        arr = numpy_helper.to_array(inits[name]).astype(np.float16)
                        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
                        converted.add(name)
                elif producer.get(name) not in body:  # graph input or pre-processing output
                    node.input[i] = cast(name, TensorProto.FLOAT16)
            elif producer.get(name) in body:           # head reading an FP16 body tensor
                node.input[i] = cast(name, TensorProto.FLOAT)
    for node in model.graph.node:  # Constant nodes inside the body emit FP32 literals
        if node.name in body and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
    if any(o.name in producer and producer[o.name] in body for o in model.graph.output):
        raise ExportError("the graph output comes from the FP16 body; expected the FP32 embedding head")
    # Topological order: each cast right before its first consumer is simplest as a global re-sort.
    nodes = list(model.graph.node) + new_nodes
    model.graph.ClearField("node")
    model.graph.node.extend(_toposort(nodes, {i.name for i in model.graph.input} | set(inits)))
    model.graph.ClearField("value_info")
    return onnx.shape_inference.infer_shapes(model)


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise ExportError(f"cannot order the FP16 graph: {rest[0].name} waits on a missing input")
        pending = rest
    return ordered


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    model = onnx.load(str(fp32_path))
    info = ModelInfo.from_metadata(read_metadata(model), source=str(fp32_path))
    if info.precision != "fp32":
        raise ExportError(f"{fp32_path} is {info.precision}; FP16 conversion starts from the FP32 file")
    fp16 = to_fp16(model)
    set_metadata(fp16, build_metadata(info.contract, precision="fp16", checkpoint_sha256=info.checkpoint_sha256,
                                      extra={"fp16_region": "resnet body; normalisation and embedding head fp32"}))
    onnx.checker.check_model(fp16)
    return save_onnx_atomic(fp16, out_path)
