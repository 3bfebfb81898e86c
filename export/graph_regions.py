"""Find the regions of an exported ADMPFF graph that must stay in float.

The embedding head is everything from the stripe pooling on: per-stripe ReduceMax (or GeM), the
1x1 reduction convs, concatenation and L2 normalisation.  These nodes are cheap (1x1 spatial) and
quantizing them costs the most embedding fidelity, so INT8 and FP16 leave them alone.
"""
from __future__ import annotations

from collections import defaultdict

import onnx

POOL_OPS = {"ReduceMax", "GlobalMaxPool", "ReduceMean", "GlobalAveragePool", "Pow"}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    consumers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    return consumers


def downstream(model: onnx.ModelProto, start: list[onnx.NodeProto]) -> set[str]:
    """Names of the given nodes and every node fed (transitively) by their outputs."""
    consumers = _consumers(model)
    seen: set[str] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        for out in node.output:
            stack.extend(consumers.get(out, []))
    return seen


def _ensure_names(model: onnx.ModelProto) -> None:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def embedding_head_nodes(model: onnx.ModelProto) -> set[str]:
    """Nodes from the first stripe pooling onwards (the part that works on pooled stripe vectors)."""
    _ensure_names(model)
    # Stripe pooling reduces over H and W; ResNet's own MaxPool (stem) is a different op type.
    pools = [n for n in model.graph.node if n.op_type in POOL_OPS]
    if not pools:
        raise ValueError("no stripe pooling found: is this an admpff embedding graph?")
    return downstream(model, pools)


def conv_nodes(model: onnx.ModelProto) -> list[str]:
    _ensure_names(model)
    return [n.name for n in model.graph.node if n.op_type == "Conv"]
