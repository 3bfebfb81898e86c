"""Check a Q/DQ ONNX against what TensorRT's explicit-quantization path accepts, without TensorRT.

Rules (see shared/docs/reference-deploy.md §1.6 and onnx/onnx-tensorrt ``docs/operators.md``):

* QuantizeLinear / DequantizeLinear zero points are 0 and signed INT8 ("`y_zero_point` must be 0";
  UINT8 is only a network I/O type).  A QuantizeLinear without a zero point outputs uint8.
* DequantizeLinear inputs are INT8 (the parser lists INT8 and FP8 only), so int32 bias Q/DQ as ONNX
  Runtime writes by default (``QuantizeBias``) is refused.
* Scales and zero points are constants (initializers or Constant nodes); scales positive and finite,
  float32 (float16 only from opset 19).
* Weights (a DequantizeLinear of an int8 initializer, or Q->DQ of a float initializer, feeding a
  Conv/Gemm/MatMul weight input) are
  per-channel along the output-channel axis (axis 0 of a Conv ``KxCxRxS``) with one scale per channel,
  and symmetric: values in [-127, 127].
* Activations are per-tensor (a scalar scale).
* The default-domain opset is >= 13 (per-axis Q/DQ) and <= the parser's ceiling (17 for TensorRT 8.5).
* No Q/DQ produces a graph output, and none sits inside the float embedding head.
"""
from __future__ import annotations

import os
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["Violation", "QdqSummary", "QdqCheckError", "check_qdq_model", "qdq_summary",
           "assert_tensorrt_qdq", "TRT85_MAX_OPSET"]

TRT85_MAX_OPSET = 17          # onnx-tensorrt docs/operators.md @ 8.5: "supports operators up to Opset 17"
MIN_QDQ_OPSET = 13            # per-axis QuantizeLinear/DequantizeLinear (axis attribute) needs 13
FP16_SCALE_OPSET = 19
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Violation:
    rule: str        # short code, e.g. "zero-point-nonzero"
    node: str        # node name (or "<model>")
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


@dataclass
class QdqSummary:
    opset: int
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    quantized_convs: int = 0
    float_convs: int = 0
    quantized_gemms: int = 0     # Gemm + MatMul with a DQ weight
    float_gemms: int = 0
    per_channel_weights: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def qdq_nodes(self) -> int:
        return self.quantize_nodes + self.dequantize_nodes

    @property
    def ok(self) -> bool:
        return not self.violations

    def describe(self) -> str:
        return (f"opset {self.opset}: {self.qdq_nodes} Q/DQ nodes ({self.quantize_nodes} Q, {self.dequantize_nodes} DQ), "
                f"{self.quantized_convs} quantized / {self.float_convs} float Conv, "
                f"{self.quantized_gemms} quantized / {self.float_gemms} float Gemm/MatMul, "
                f"{len(self.violations)} violation(s)")


class QdqCheckError(ValueError):
    def __init__(self, summary: QdqSummary, source: str = "model"):
        self.summary = summary
        shown = "; ".join(str(v) for v in summary.violations[:8])
        more = f" (+{len(summary.violations) - 8} more)" if len(summary.violations) > 8 else ""
        super().__init__(f"{source} breaks TensorRT's Q/DQ rules ({len(summary.violations)}): {shown}{more}")


# ------------------------------------------------------------------------------------------------
def _load(model_or_path):
    import onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        return onnx.load(str(model_or_path)), Path(model_or_path).name
    return model_or_path, "model"


def _default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        g = model.graph
        self.nodes = list(g.node)
        self.names = [n.name or f"{n.op_type}#{i}" for i, n in enumerate(self.nodes)]
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.const_types = {t.name: t.data_type for t in g.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
                        self.const_types[node.output[0]] = attr.t.data_type
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for out in node.output:
                self.producer[out] = i
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(i)
        self.outputs = [o.name for o in g.output]
        self.value_types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input)
                            + list(g.output)}

    def downstream(self, start: Iterable[int]) -> set[int]:
        seen: set[int] = set()
        todo = deque(start)
        while todo:
            i = todo.popleft()
            for out in self.nodes[i].output:
                for j in self.consumers.get(out, ()):
                    if j not in seen:
                        seen.add(j)
                        todo.append(j)
        return seen


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _weight_axis(node, rank: int) -> int:
    """The output-channel axis of the weight input: Conv 0, ConvTranspose 1, Gemm 0 (transB) or 1, MatMul last."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return rank - 1  # MatMul: B is [.., K, N]


def _match(node, name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p) or node.op_type == p for p in patterns)


def qdq_summary(model_or_path, *, max_opset: int = TRT85_MAX_OPSET, min_opset: int = MIN_QDQ_OPSET,
                float_head_after: str | None = None, float_nodes: Sequence[str] = ()) -> QdqSummary:
    """Walk the graph, count Q/DQ and quantized layers, and collect every rule violation.

    ``float_head_after``: a node name, or an op type meaning the *last* node of that type (e.g.
    ``"Concat"`` for the stripe concat); nothing downstream of it may be a Q/DQ node.
    ``float_nodes``: node names, name prefixes or op types that must stay float (no DQ feeds them, no Q
    consumes their outputs).
    """
    from onnx import TensorProto

    model, _source = _load(model_or_path)
    g = _Graph(model)
    opset = _default_opset(model)
    s = QdqSummary(opset=opset)
    v = s.violations

    def add(rule, node, msg):
        v.append(Violation(rule, node, msg))

    if opset < min_opset:
        add("opset-too-low", "<model>", f"default-domain opset {opset} < {min_opset}: per-channel Q/DQ needs opset 13")
    if max_opset is not None and opset > max_opset:
        add("opset-too-high", "<model>", f"default-domain opset {opset} > {max_opset}, the parser's ceiling "
                                         "(TensorRT 8.5 parses up to 17): re-export with a lower opset")

    weight_dq: set[int] = set()  # DQ nodes that feed a weight input from an initializer
    for i, node in enumerate(g.nodes):
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        p = g.producer.get(node.input[1])
        quantized = p is not None and g.nodes[p].op_type == "DequantizeLinear"
        if node.op_type in ("Conv", "ConvTranspose"):
            s.quantized_convs += quantized
            s.float_convs += not quantized
        else:
            s.quantized_gemms += quantized
            s.float_gemms += not quantized
        if not quantized:
            continue
        source = g.nodes[p].input[0]
        if source in g.consts:            # DQ(int8 initializer): weights stored quantized (ORT)
            weight_dq.add(p)
            _check_weight(g, p, node, g.names[i], add, s)
            continue
        q = g.producer.get(source)        # Q(float initializer) -> DQ: weights quantized at build time
        if q is not None and g.nodes[q].op_type == "QuantizeLinear" and g.nodes[q].input[0] in g.consts:
            weight_dq.update({p, q})      # (Model Optimizer, pytorch-quantization); TensorRT folds it
            _check_weight(g, q, node, g.names[i], add, s)

    for i, node in enumerate(g.nodes):
        if node.op_type not in QDQ_OPS:
            continue
        name = g.names[i]
        if node.op_type == "QuantizeLinear":
            s.quantize_nodes += 1
        else:
            s.dequantize_nodes += 1
        scale_name = node.input[1] if len(node.input) > 1 else ""
        zp_name = node.input[2] if len(node.input) > 2 else ""
        scale = g.consts.get(scale_name)
        if scale is None:
            add("scale-not-constant", name, f"scale {scale_name!r} is not an initializer or Constant")
        else:
            if scale.dtype == np.float16 and opset < FP16_SCALE_OPSET:
                add("scale-dtype", name, f"float16 scale needs opset >= {FP16_SCALE_OPSET} (model has {opset})")
            elif scale.dtype not in (np.float32, np.float16):
                add("scale-dtype", name, f"scale is {scale.dtype}, expected float32")
            if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                add("scale-nonpositive", name, f"scale has values <= 0 or non-finite (min {float(np.min(scale)):g})")
            constant_input = node.op_type == "DequantizeLinear" and node.input[0] in g.consts
            if i not in weight_dq and not constant_input and scale.size > 1:
                add("activation-per-channel", name, f"activation Q/DQ has {scale.size} scales; TensorRT wants "
                                                    "per-tensor (scalar) activation scales")
        if zp_name:
            zp = g.consts.get(zp_name)
            if zp is None:
                add("zero-point-not-constant", name, f"zero point {zp_name!r} is not an initializer or Constant")
            else:
                if zp.dtype == np.int32 and node.op_type == "DequantizeLinear":
                    pass  # reported once below as int32 DQ
                elif zp.dtype != np.int8:
                    add("zero-point-dtype", name, f"zero point is {zp.dtype}, TensorRT needs signed int8 "
                                                  "(symmetric INT8; uint8 is only a network I/O type)")
                if np.any(zp != 0):
                    add("zero-point-nonzero", name, f"zero point is not 0 (e.g. {int(zp.flat[np.flatnonzero(zp)[0]])}): "
                                                    "TensorRT only supports symmetric quantization")
        elif node.op_type == "QuantizeLinear":
            add("zero-point-dtype", name, "QuantizeLinear without a zero point outputs uint8; give it an int8 zero "
                                          "point of 0")
        if node.op_type == "DequantizeLinear":
            x = node.input[0]
            xtype = g.const_types.get(x) or g.value_types.get(x)
            if xtype is None and x in g.producer and g.nodes[g.producer[x]].op_type == "QuantizeLinear":
                qzp = g.nodes[g.producer[x]].input[2:3]
                xtype = g.const_types.get(qzp[0]) if qzp else TensorProto.UINT8
            if xtype == TensorProto.INT32:
                add("dq-int32", name, "DequantizeLinear of int32 (a quantized bias): TensorRT's parser dequantizes "
                                      "INT8/FP8 only; quantize with extra_options={'QuantizeBias': False}")
            elif xtype == TensorProto.UINT8 and not zp_name:
                add("zero-point-dtype", name, "DequantizeLinear of uint8: TensorRT needs signed int8")
        for out in node.output:
            if out in g.outputs:
                add("qdq-on-output", name, f"produces graph output {out!r}: keep outputs float (no Q/DQ on outputs)")

    # The float embedding head.
    head: set[int] = set()
    if float_head_after:
        marks = [i for i, n in enumerate(g.nodes) if g.names[i] == float_head_after]
        if not marks:
            marks = [i for i, n in enumerate(g.nodes) if n.op_type == float_head_after][-1:]
        if not marks:
            add("float-head-marker", "<model>", f"float_head_after={float_head_after!r} matches no node name or op type")
        else:
            head = g.downstream(marks)
            for j in sorted(head):
                if g.nodes[j].op_type in QDQ_OPS:
                    add("qdq-in-float-head", g.names[j], f"{g.nodes[j].op_type} downstream of "
                                                         f"{g.names[marks[0]]}: the embedding head must stay float")
    if float_nodes:
        for i, node in enumerate(g.nodes):
            if node.op_type in QDQ_OPS or not _match(node, g.names[i], float_nodes):
                continue
            for inp in node.input:
                p = g.producer.get(inp)
                if p is not None and g.nodes[p].op_type == "DequantizeLinear" and p not in head:
                    add("qdq-in-float-head", g.names[i], f"input {inp!r} comes from DequantizeLinear {g.names[p]}; "
                                                         "this node must stay float")
            for out in node.output:
                for c in g.consumers.get(out, ()):
                    if g.nodes[c].op_type == "QuantizeLinear" and c not in head:
                        add("qdq-in-float-head", g.names[i], f"output {out!r} is quantized by {g.names[c]}; "
                                                             "this node must stay float")
    return s


def _check_weight(g: _Graph, dq: int, layer, layer_name: str, add, s: QdqSummary) -> None:
    node = g.nodes[dq]
    name = g.names[dq]
    w = g.consts[node.input[0]]
    scale = g.consts.get(node.input[1]) if len(node.input) > 1 else None
    if w.dtype == np.int8 and w.size and int(w.min()) < -127:
        add("weight-range", name, f"weight of {layer_name} has -128: symmetric INT8 weights must lie in [-127, 127]")
    if scale is None:
        return  # reported as scale-not-constant
    expected_axis = _weight_axis(layer, w.ndim)
    if scale.size <= 1:
        if w.ndim >= 2:
            add("weight-per-tensor", name, f"weight of {layer_name} is per-tensor; quantize weights per-channel "
                                           f"along axis {expected_axis} (output channels)")
        return
    axis = int(_attr(node, "axis", 1))
    if axis < 0:
        axis += w.ndim
    if axis != expected_axis:
        add("weight-axis", name, f"weight of {layer_name} is quantized along axis {axis}; TensorRT wants the "
                                 f"output-channel axis {expected_axis}")
    elif scale.size != w.shape[axis]:
        add("weight-scale-length", name, f"{scale.size} scales for {w.shape[axis]} output channels of {layer_name}")
    else:
        s.per_channel_weights += 1


def check_qdq_model(model_or_path, **options) -> list[Violation]:
    """Every TensorRT Q/DQ rule the model breaks (empty list: passes).  Options as :func:`qdq_summary`."""
    return qdq_summary(model_or_path, **options).violations


def assert_tensorrt_qdq(path, **options) -> QdqSummary:
    """Raise :class:`QdqCheckError` listing the violations; return the summary if the model passes."""
    summary = qdq_summary(path, **options)
    if summary.violations:
        source = Path(path).name if isinstance(path, (str, os.PathLike)) else "model"
        raise QdqCheckError(summary, source)
    if summary.qdq_nodes == 0:
        source = Path(path).name if isinstance(path, (str, os.PathLike)) else "model"
        summary.violations.append(Violation("no-qdq", "<model>", "no QuantizeLinear/DequantizeLinear nodes: "
                                                                 "this is not a Q/DQ model"))
        raise QdqCheckError(summary, source)
    return summary
