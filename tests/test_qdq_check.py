"""TensorRT Q/DQ rules, checked on hand-built graphs and on a real ONNX Runtime quantization."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from admpff.export.qdq_check import (QdqCheckError, assert_tensorrt_qdq, check_qdq_model,  # noqa: E402
                                     qdq_summary)

RNG = np.random.default_rng(0)


def _qdq_conv(*, zp_value=0, zp_dtype=np.int8, weight_scale_len=8, weight_axis=0, act_scale_len=1,
              scale_as_input=False, qdq_on_output=False, opset=13, weight_min=-127, scale_dtype=np.float32,
              head=False):
    """x -Q/DQ-> Conv(DQ(w_int8)) -> Relu -> y ; optionally a Concat head after the conv."""
    w = RNG.integers(-100, 100, size=(8, 3, 3, 3)).astype(np.int8)
    w.flat[0] = weight_min
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(weight_scale_len, 0.01, scale_dtype).reshape(-1) if weight_scale_len > 1
                                else np.array(0.01, scale_dtype), "w_scale"),
        numpy_helper.from_array(np.zeros(weight_scale_len, zp_dtype) if weight_scale_len > 1
                                else np.array(0, zp_dtype), "w_zp"),
        numpy_helper.from_array(np.full(act_scale_len, 0.05, scale_dtype) if act_scale_len > 1
                                else np.array(0.05, scale_dtype), "x_scale"),
        numpy_helper.from_array(np.full(act_scale_len, zp_value, zp_dtype) if act_scale_len > 1
                                else np.array(zp_value, zp_dtype), "x_zp"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])]
    if scale_as_input:  # a scale computed at run time instead of a constant
        inits = [i for i in inits if i.name != "x_scale"]
        inputs.append(helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, []))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="x_q", axis=1),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="x_dq", axis=1),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dq", axis=weight_axis),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    out = "r"
    if head:
        nodes += [helper.make_node("Concat", ["r", "r"], ["cat"], name="stripe_concat", axis=1),
                  helper.make_node("QuantizeLinear", ["cat", "x_scale", "x_zp"], ["hq"], name="head_q"),
                  helper.make_node("DequantizeLinear", ["hq", "x_scale", "x_zp"], ["hd"], name="head_dq"),
                  helper.make_node("LpNormalization", ["hd"], ["y"], name="l2", axis=1)]
        out = "y"
    if qdq_on_output:
        nodes += [helper.make_node("QuantizeLinear", [out, "x_scale", "x_zp"], ["oq"], name="out_q"),
                  helper.make_node("DequantizeLinear", ["oq", "x_scale", "x_zp"], ["od"], name="out_dq")]
        out = "od"
    graph = helper.make_graph(nodes, "qdq", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 8, 16, 16])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def rules(model, **kw):
    return Counter(v.rule for v in check_qdq_model(model, **kw))


def test_per_channel_weights_and_per_tensor_activations_pass():
    model = _qdq_conv()
    onnx.checker.check_model(model)
    s = qdq_summary(model)
    assert s.violations == []
    assert (s.quantize_nodes, s.dequantize_nodes, s.quantized_convs, s.float_convs) == (1, 2, 1, 0)
    assert s.per_channel_weights == 1
    assert "1 quantized / 0 float Conv" in s.describe()
    assert assert_tensorrt_qdq(model).ok


@pytest.mark.parametrize("kwargs, rule", [
    (dict(zp_value=3), "zero-point-nonzero"),
    (dict(zp_dtype=np.uint8, zp_value=128), "zero-point-dtype"),
    (dict(zp_dtype=np.uint8, zp_value=0), "zero-point-dtype"),
    (dict(weight_scale_len=1), "weight-per-tensor"),
    (dict(weight_axis=1, weight_scale_len=3), "weight-axis"),
    (dict(weight_scale_len=4), "weight-scale-length"),
    (dict(act_scale_len=3), "activation-per-channel"),
    (dict(scale_as_input=True), "scale-not-constant"),
    (dict(qdq_on_output=True), "qdq-on-output"),
    (dict(opset=19), "opset-too-high"),
    (dict(weight_min=-128), "weight-range"),
])
def test_each_rule_is_reported(kwargs, rule):
    found = rules(_qdq_conv(**kwargs))
    assert rule in found, found


def test_opset_ceiling_is_a_parameter():
    assert "opset-too-high" not in rules(_qdq_conv(opset=19), max_opset=21)
    assert "opset-too-low" in rules(_qdq_conv(opset=13), min_opset=14)


def test_fp16_scales_need_opset_19():
    assert "scale-dtype" in rules(_qdq_conv(scale_dtype=np.float16, opset=17))
    assert "scale-dtype" not in rules(_qdq_conv(scale_dtype=np.float16, opset=19), max_opset=19)


def test_negative_scale_is_reported():
    model = _qdq_conv()
    for init in model.graph.initializer:
        if init.name == "x_scale":
            init.CopyFrom(numpy_helper.from_array(np.array(-0.5, np.float32), "x_scale"))
    assert "scale-nonpositive" in rules(model)


def test_float_head_after_marker():
    model = _qdq_conv(head=True)
    assert "qdq-in-float-head" not in rules(model)              # no head declared: fine
    found = check_qdq_model(model, float_head_after="Concat")   # op type: the last Concat
    assert {v.node for v in found if v.rule == "qdq-in-float-head"} == {"head_q", "head_dq"}
    assert rules(model, float_head_after="stripe_concat")["qdq-in-float-head"] == 2  # by node name
    assert "float-head-marker" in rules(model, float_head_after="NoSuchOp")
    assert "qdq-in-float-head" in rules(model, float_nodes=["LpNormalization"])


def test_assert_raises_with_every_violation_listed(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_qdq_conv(zp_value=3, qdq_on_output=True), path)
    with pytest.raises(QdqCheckError) as err:
        assert_tensorrt_qdq(path)
    assert "bad.onnx" in str(err.value) and "zero-point-nonzero" in str(err.value) and "qdq-on-output" in str(err.value)


def test_float_model_is_not_a_qdq_model():
    model = _qdq_conv()
    float_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "f",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(float_graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(QdqCheckError, match="no-qdq"):
        assert_tensorrt_qdq(model)


# -- a real ONNX Runtime quantization ----------------------------------------------------------------
def _float_convnet(path):
    inits = [numpy_helper.from_array(RNG.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.normal(0, 0.1, (8,)).astype(np.float32), "b1"),
             numpy_helper.from_array(RNG.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(RNG.normal(0, 0.1, (8,)).astype(np.float32), "b2"),
             numpy_helper.from_array(RNG.normal(0, 0.2, (16, 8)).astype(np.float32), "wf"),
             numpy_helper.from_array(np.zeros(16, np.float32), "bf")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="residual"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["g"], transB=1, name="fc"),
             helper.make_node("LpNormalization", ["g"], ["y"], axis=1, p=2, name="l2")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _ort_quantize(src, dst, **extra):
    quant = pytest.importorskip("onnxruntime.quantization")

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter([{"x": rng.random((2, 3, 16, 16), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quant.quantize_static(str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ,
                          activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8,
                          per_channel=True, extra_options=extra)
    return dst


@pytest.fixture(scope="module")
def float_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("ort") / "net.onnx"
    _float_convnet(path)
    return path


def test_ort_symmetric_qdq_quantizes_biases_to_int32_which_tensorrt_refuses(float_net):
    dst = _ort_quantize(float_net, float_net.with_name("sym.onnx"), ActivationSymmetric=True, WeightSymmetric=True)
    found = rules(dst)
    # Zero points, dtypes, axes and scales are all fine; only the three int32 bias DQ nodes remain.
    assert found == Counter({"dq-int32": 3}), found


def test_ort_symmetric_without_bias_quantization_passes(float_net):
    dst = _ort_quantize(float_net, float_net.with_name("sym_nobias.onnx"), ActivationSymmetric=True,
                        WeightSymmetric=True, QuantizeBias=False)
    summary = assert_tensorrt_qdq(dst)
    assert summary.quantized_convs == 2 and summary.quantized_gemms == 1 and summary.per_channel_weights == 3
    # ... but ORT also quantizes the embedding head (the Gemm output feeding the L2 norm) unless excluded.
    assert "qdq-in-float-head" in rules(dst, float_head_after="fc")


def test_ort_asymmetric_activations_fail_on_zero_points(float_net):
    dst = _ort_quantize(float_net, float_net.with_name("asym.onnx"), WeightSymmetric=True, QuantizeBias=False)
    found = rules(dst)
    assert found["zero-point-nonzero"] > 0, found


def _fake_quantized_weights(model, weight_axis=0):
    """Rewrite DQ(int8 w) into Q(float w) -> DQ, the form Model Optimizer and pytorch-quantization emit."""
    w_q = next(i for i in model.graph.initializer if i.name == "w_q")
    w_float = numpy_helper.to_array(w_q).astype(np.float32) * 0.01
    w_q.CopyFrom(numpy_helper.from_array(w_float, "w_float"))
    nodes = list(model.graph.node)
    dq = next(n for n in nodes if n.name == "w_dq")
    dq.input[0] = "w_qq"
    q = helper.make_node("QuantizeLinear", ["w_float", "w_scale", "w_zp"], ["w_qq"], name="w_q", axis=weight_axis)
    model.graph.ClearField("node")
    model.graph.node.extend([q] + nodes)
    return model


def test_q_dq_pair_on_float_weights_is_a_weight_quantizer():
    assert not rules(_fake_quantized_weights(_qdq_conv()))
    assert rules(_fake_quantized_weights(_qdq_conv(weight_scale_len=1)))["weight-per-tensor"] == 1
    assert rules(_fake_quantized_weights(_qdq_conv(weight_axis=1), weight_axis=1))["weight-axis"] >= 1
