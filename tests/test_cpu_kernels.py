"""Steering CPU-INT8 convolutions to ONNX Runtime's QGEMM (AMX) kernel must not change a single output bit."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from admpff.export.cpu_kernels import cpu_has_amx_int8, resolve_cpu_kernel, steer_convs_to_qgemm


def _fp32_convnet(path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32) * 0.2, "w2"),
             numpy_helper.from_array(rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1, "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 24, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


class _Reader(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(1)
        self.batches = iter([{"x": rng.random((4, 3, 24, 12), dtype=np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def cpu_int8(tmp_path_factory):
    base = tmp_path_factory.mktemp("kern")
    _fp32_convnet(base / "fp32.onnx")
    quantize_static(str(base / "fp32.onnx"), str(base / "int8.onnx"), _Reader(), quant_format=QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return base / "int8.onnx"


def _run(model: onnx.ModelProto, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _conv_zero_points(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[5]] for n in model.graph.node if n.op_type == "QLinearConv"]


def test_steering_is_bit_exact_and_idempotent(cpu_int8):
    original = onnx.load(str(cpu_int8))
    assert _conv_zero_points(original) and all(np.all(z == 0) for z in _conv_zero_points(original))
    steered = onnx.load(str(cpu_int8))
    assert steer_convs_to_qgemm(steered) == 3
    assert all(np.all(z == -1) for z in _conv_zero_points(steered))
    x = np.random.default_rng(2).random((3, 3, 24, 12), dtype=np.float32)
    reference = _run(original, x)
    assert np.array_equal(_run(steered, x), reference)
    assert np.abs(reference).max() > 0
    assert steer_convs_to_qgemm(steered) == 0  # already steered: nothing left to move


def test_a_weight_read_by_another_node_is_left_alone(cpu_int8):
    model = onnx.load(str(cpu_int8))
    first = next(n for n in model.graph.node if n.op_type == "QLinearConv")
    # a second reader of the first conv's weight (an Identity output nobody uses)
    model.graph.node.append(helper.make_node("Identity", [first.input[3]], ["weight_copy"]))
    assert steer_convs_to_qgemm(model) == 2
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.all(inits[first.input[5]] == 0)


def test_kernel_choice(tmp_path):
    with_amx, without = tmp_path / "amx", tmp_path / "vnni"
    with_amx.write_text("processor : 0\nflags\t\t: fpu sse avx512_vnni amx_bf16 amx_int8 amx_tile\n")
    without.write_text("processor : 0\nflags\t\t: fpu sse avx512_vnni\n")
    assert cpu_has_amx_int8(str(with_amx)) and not cpu_has_amx_int8(str(without))
    assert not cpu_has_amx_int8(str(tmp_path / "missing"))
    assert resolve_cpu_kernel("qgemm") == "qgemm" and resolve_cpu_kernel("convsym") == "convsym"
    assert resolve_cpu_kernel("auto") == ("qgemm" if cpu_has_amx_int8() else "convsym")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_cpu_kernel("fast")
