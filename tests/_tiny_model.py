"""Tiny but real ADMPFF-contract ONNX models for tests: built with onnx.helper, run by ONNX Runtime.

``build_tiny_embedder(path)`` writes a model with the exported graph's interface (``images``
float32 [N,3,288,144] RGB 0..255, ``modality`` int32 [N] -> ``embedding`` float32 [N, 5120]) and
the admpff metadata, so ``load_embedder`` treats it exactly like an exported ADMPFF-Net:

    embedding = L2norm( ((GAP(images) - mean) / std) @ W  +  float(modality) * m )

Crops of different colours give different directions; the same crop in another modality is shifted
by ``m``.  ``build_tiny_yolo`` writes a detector whose output is a fixed ``[1, 4+nc, N]`` tensor
(ignoring the image), to test decoding, NMS and letterbox mapping.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from admpff.runtime.contract import DEFAULT_CONTRACT, InputContract, build_metadata

OPSET = 17
IR_VERSION = 8  # readable by every ONNX Runtime this project supports


def _save(model: onnx.ModelProto, path: str | Path) -> Path:
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_tiny_embedder(path: str | Path, *, checkpoint_sha256: str = "test", seed: int = 0,
                        contract: InputContract = DEFAULT_CONTRACT, precision: str = "fp32",
                        modality_scale: float = 0.3) -> Path:
    """Write the tiny embedding model to ``path`` and return the path."""
    c = contract
    dim = c.embedding_dim
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, dim)).astype(np.float32)
    m = (rng.standard_normal((1, dim)) * modality_scale).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.asarray(c.mean_255, np.float32).reshape(1, 3, 1, 1), "mean"),
        numpy_helper.from_array(np.asarray(c.std_255, np.float32).reshape(1, 3, 1, 1), "std"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(m, "M"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axis1"),
        numpy_helper.from_array(np.asarray(1e-12, np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["gap"]),
        helper.make_node("Sub", ["gap", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "std"], ["normed"]),
        helper.make_node("Flatten", ["normed"], ["feat"], axis=1),
        helper.make_node("MatMul", ["feat", "W"], ["proj"]),
        helper.make_node("Cast", ["modality"], ["mod_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mod_f", "axis1"], ["mod_col"]),
        helper.make_node("MatMul", ["mod_col", "M"], ["mod_term"]),
        helper.make_node("Add", ["proj", "mod_term"], ["raw"]),
        helper.make_node("ReduceL2", ["raw"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["safe_norm"]),
        helper.make_node("Div", ["raw", "safe_norm"], [c.output_name]),
    ]
    graph = helper.make_graph(
        nodes, "admpff_tiny",
        [helper.make_tensor_value_info(c.input_names[0], TensorProto.FLOAT, ["N", 3, c.height, c.width]),
         helper.make_tensor_value_info(c.input_names[1], TensorProto.INT32, ["N"])],
        [helper.make_tensor_value_info(c.output_name, TensorProto.FLOAT, ["N", dim])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="admpff-tests")
    meta = build_metadata(c, precision=precision, checkpoint_sha256=checkpoint_sha256)
    helper.set_model_props(model, meta)
    return _save(model, path)


def build_tiny_yolo(path: str | Path, output: np.ndarray, *, input_hw: tuple[int, int] = (640, 640),
                    names: dict | None = None) -> Path:
    """A "YOLO" ONNX taking ``images`` [1,3,H,W] and always emitting ``output`` ([1, 4+nc, N] or its
    transpose).  The image is used (times zero) so the graph has a real data dependency."""
    out = np.asarray(output, np.float32)
    inits = [numpy_helper.from_array(out, "fixed"),
             numpy_helper.from_array(np.asarray(0.0, np.float32), "zero")]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["fixed", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *input_hw])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="admpff-tests")
    if names is not None:
        helper.set_model_props(model, {"names": repr(names)})
    return _save(model, path)
