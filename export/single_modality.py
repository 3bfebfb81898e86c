"""Single-input exports: fix the modality inside the graph so the file takes only ``images``.

DeepStream's tracker re-ID, nvinfer and most trackers' re-ID backends feed exactly one image tensor.
The two-input graph selects a stem per sample with ``Where(modality == INFRARED, ir_stem, vis_stem)``;
here the ``modality`` input becomes a constant of the batch's length (``ConstantOfShape`` of the image
batch size), every ``Where`` whose condition then depends only on that constant and the batch *shape*
is evaluated once and replaced by the branch it selects, and the dead stem is removed.  The same pass
works on every precision's file (FP32, FP16, INT8 Q/DQ, CPU-INT8), because it never touches the
computation that remains.  Each result is checked against the two-input file called with that
modality (ONNX Runtime, max abs <= ``PARITY_BOUND``) before it is kept.

Metadata: ``admpff.fixed_modality`` names the modality, and the contract lists the single input, so the
runtime loads the file like any other and refuses crops of the other modality.
"""
from __future__ import annotations

import json
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from admpff.runtime.contract import CONTRACT_KEY, InputContract

from .checkpoint_io import ExportError
from .onnx_export import batch_is_dynamic, read_metadata, save_onnx_atomic, set_metadata

__all__ = ["FIXED_MODALITY_KEY", "PARITY_BOUND", "fix_modality", "single_modality_path", "max_abs_vs_two_input"]

FIXED_MODALITY_KEY = "admpff.fixed_modality"
PARITY_BOUND = 1e-5
_PREFIX = "admpff_fixed_modality"


def single_modality_path(two_input: str | Path, modality: str, name: str | None = None) -> Path:
    """``DIR/<name>.onnx`` -> ``DIR/<name>.<modality>.onnx``; ``<name>.int8.onnx`` -> ``<name>.<modality>.int8.onnx``."""
    two_input = Path(two_input)
    if name and two_input.name.startswith(name + "."):
        return two_input.with_name(f"{name}.{modality}{two_input.name[len(name):]}")
    return two_input.with_name(f"{two_input.stem}.{modality}{two_input.suffix}")


def _contract(model: onnx.ModelProto, source: str) -> InputContract:
    meta = read_metadata(model)
    if CONTRACT_KEY not in meta:
        raise ExportError(f"{source} carries no admpff contract; export it with admpff-export first")
    if FIXED_MODALITY_KEY in meta:
        raise ExportError(f"{source} is already fixed to {meta[FIXED_MODALITY_KEY]}")
    return InputContract.from_json(meta[CONTRACT_KEY])


def _ancestors(nodes, producer: dict[str, int], tensors) -> set[int]:
    seen: set[int] = set()
    todo = deque(producer[t] for t in tensors if t in producer)
    while todo:
        i = todo.popleft()
        if i in seen:
            continue
        seen.add(i)
        todo.extend(producer[t] for t in nodes[i].input if t in producer)
    return seen


def _depends_on_values_of(nodes, producer, tensor: str, image_input: str) -> bool:
    """True when ``tensor`` depends on the *pixels* of ``image_input`` (not only on its shape)."""
    todo, seen = deque([tensor]), set()
    while todo:
        t = todo.popleft()
        if t == image_input:
            return True
        if t in seen or t not in producer:
            continue
        seen.add(t)
        node = nodes[producer[t]]
        if node.op_type == "Shape":
            continue  # shape only: the batch size, never the values
        todo.extend(i for i in node.input if i)
    return False


def _evaluate(model: onnx.ModelProto, tensors: list[str], image_input: str, contract: InputContract) -> dict:
    """Run just the subgraph that computes ``tensors`` (shape ops and constants) on a dummy batch."""
    import onnxruntime as ort

    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    keep = sorted(_ancestors(list(g.node), producer, tensors))
    used = {t for i in keep for t in g.node[i].input}
    sub = helper.make_graph(
        [g.node[i] for i in keep], "condition",
        [helper.make_tensor_value_info(image_input, TensorProto.FLOAT, ["N", 3, contract.height, contract.width])],
        [helper.make_tensor_value_info(t, TensorProto.BOOL, None) for t in tensors],
        initializer=[t for t in g.initializer if t.name in used])
    m = helper.make_model(sub, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    results = {}
    for n in (1, 3):  # two batch sizes: a condition that changes with the batch is not constant
        dummy = np.zeros((n, 3, contract.height, contract.width), np.float32)
        for name, value in zip(tensors, sess.run(tensors, {image_input: dummy})):
            results.setdefault(name, []).append(np.asarray(value))
    return results


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes, initializers and value_info that no graph output needs any more."""
    g = model.graph
    nodes = list(g.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    live = _ancestors(nodes, producer, [o.name for o in g.output])
    kept = [n for i, n in enumerate(nodes) if i in live]
    used = {t for n in kept for t in n.input} | {o.name for o in g.output}
    produced = {o for n in kept for o in n.output} | {i.name for i in g.input}
    del g.node[:]
    g.node.extend(kept)
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    infos = [v for v in g.value_info if v.name in produced or v.name in used]
    del g.value_info[:]
    g.value_info.extend(infos)


def fix_modality_proto(model: onnx.ModelProto, modality: str, source: str = "model") -> tuple[onnx.ModelProto, int]:
    """Return (single-input model, number of stem selections folded away)."""
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    contract = _contract(model_out, source)
    code = contract.modality_code(modality)
    name = next(k for k, v in contract.modality_codes.items() if v == code)
    image_input, modality_input = contract.input_names[0], contract.input_names[1]
    g = model_out.graph
    inputs = {i.name: i for i in g.input}
    if modality_input not in inputs:
        raise ExportError(f"{source} has no {modality_input!r} input to fix")
    dtype = inputs[modality_input].type.tensor_type.elem_type
    keep_inputs = [i for i in g.input if i.name != modality_input]
    del g.input[:]
    g.input.extend(keep_inputs)
    # modality := ConstantOfShape(Shape(images)[0:1], code): one value per sample, any batch size.
    g.initializer.extend([numpy_helper.from_array(np.asarray([0], np.int64), f"{_PREFIX}_start"),
                          numpy_helper.from_array(np.asarray([1], np.int64), f"{_PREFIX}_end")])
    fill = numpy_helper.from_array(np.asarray([code], helper.tensor_dtype_to_np_dtype(dtype)), "value")
    g.node.insert(0, helper.make_node("ConstantOfShape", [f"{_PREFIX}_batch"], [modality_input],
                                      name=f"{_PREFIX}_fill", value=fill))
    g.node.insert(0, helper.make_node("Slice", [f"{_PREFIX}_shape", f"{_PREFIX}_start", f"{_PREFIX}_end"],
                                      [f"{_PREFIX}_batch"], name=f"{_PREFIX}_batch"))
    g.node.insert(0, helper.make_node("Shape", [image_input], [f"{_PREFIX}_shape"], name=f"{_PREFIX}_shape"))

    nodes = list(g.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    wheres = [n for n in nodes if n.op_type == "Where"
              and _ancestors(nodes, producer, [n.input[0]]) & {producer[modality_input]}
              and not _depends_on_values_of(nodes, producer, n.input[0], image_input)]
    folded = 0
    if wheres:
        values = _evaluate(model_out, [w.input[0] for w in wheres], image_input, contract)
        rename: dict[str, str] = {}
        drop = set()
        for w in wheres:
            seen = values[w.input[0]]
            if not all(v.size and (v.all() or not v.any()) for v in seen) or len({bool(v.all()) for v in seen}) != 1:
                continue  # not uniform: leave this Where as it is
            chosen = w.input[1] if seen[0].all() else w.input[2]
            rename[w.output[0]] = chosen
            drop.add(id(w))
            folded += 1
        outputs = {o.name for o in g.output}
        kept = []
        for n in g.node:
            if id(n) in drop:
                if n.output[0] in outputs:  # keep the graph output's name
                    kept.append(helper.make_node("Identity", [rename.pop(n.output[0])], [n.output[0]], name=n.name))
                continue
            kept.append(n)
        for n in kept:
            for k, t in enumerate(n.input):
                while t in rename:
                    t = rename[t]
                n.input[k] = t
        del g.node[:]
        g.node.extend(kept)
    _prune(model_out)

    meta = read_metadata(model_out)
    contract_dict = json.loads(meta[CONTRACT_KEY])
    contract_dict["input_names"] = [image_input]
    set_metadata(model_out, {CONTRACT_KEY: json.dumps(InputContract.from_dict(contract_dict).to_dict(), sort_keys=True),
                             FIXED_MODALITY_KEY: name})
    onnx.checker.check_model(model_out)
    if not batch_is_dynamic(model_out):
        raise ExportError(f"fixing the modality of {source} lost the dynamic batch dimension")
    return model_out, folded


def max_abs_vs_two_input(two_input: str | Path, single: str | Path, modality: str,
                         images: np.ndarray | None = None, seed: int = 0) -> float:
    """Max abs difference between the single-input file and the two-input one called with ``modality``."""
    import onnxruntime as ort

    def session(path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    two, one = session(two_input), session(single)
    contract = InputContract.from_json(two.get_modelmeta().custom_metadata_map[CONTRACT_KEY])
    code = contract.modality_code(modality)
    if images is None:
        rng = np.random.default_rng(seed)
        batches = [(rng.random((n, 3, contract.height, contract.width)) * 255).astype(np.float32) for n in (1, 3)]
    else:
        batches = [np.asarray(images, np.float32)]
    worst = 0.0
    for batch in batches:
        mod = np.full(len(batch), code, np.int32)
        a = two.run([contract.output_name], {contract.input_names[0]: batch, contract.input_names[1]: mod})[0]
        b = one.run([contract.output_name], {contract.input_names[0]: batch})[0]
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
    return worst


def fix_modality(two_input: str | Path, out_path: str | Path, modality: str, *, check: bool = True) -> Path:
    """Write ``out_path``: ``two_input`` with ``modality`` fixed inside the graph (one input)."""
    two_input = Path(two_input)
    model = onnx.load(str(two_input))
    single, folded = fix_modality_proto(model, modality, two_input.name)
    path = save_onnx_atomic(single, out_path)
    if check:
        diff = max_abs_vs_two_input(two_input, path, modality)
        if diff > PARITY_BOUND:
            path.unlink()
            raise ExportError(f"{path.name} differs from {two_input.name} called with modality {modality} "
                              f"by {diff:.2e} (> {PARITY_BOUND:g}); not kept")
    return path


def remaining_where_nodes(model_or_path) -> int:
    """How many ``Where`` stem selections a file still has (0 in a fixed file of the ADMPFF graph)."""
    model = onnx.load(str(model_or_path)) if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    return sum(1 for n in model.graph.node if n.op_type == "Where")
