"""A QAT checkpoint (``admpff-train --qat-from``) -> the TensorRT Q/DQ ONNX with its learned scales.

No calibration happens here: the activation scales are the ones the fine-tuning learned, the weights
are the trained int8 integers (stored as int8 initializers behind a per-channel DequantizeLinear, as
ONNX Runtime's quantizer writes them), with per-output-channel scales max|w| / 127, exactly the
arithmetic the fake quantizers trained with.  The file obeys every rule of ``qdq_check`` (symmetric
signed int8, zero points 0, per-channel weights on axis 0 in [-127, 127], per-tensor activations, FP32
scales, no Q/DQ in the embedding head or on the output) at opset 13-17, so JetPack 5's TensorRT 8.5
parses it.  ``admpff-export --int8`` takes this path by itself when given a QAT checkpoint.
"""
from __future__ import annotations

import contextlib
import functools
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .checkpoint_io import ExportError, file_sha256, load_checkpoint

__all__ = ["is_qat_model", "load_export_model", "export_qat_qdq", "learned_scales", "verify_on_unseen_crops",
           "seen_by_qat"]


def is_qat_model(model) -> bool:
    from admpff.training.qat import quantized_convs
    return bool(quantized_convs(model))


def load_export_model(path: str | Path):
    """-> (model in eval mode, ModelConfig, checkpoint sha256) for an ordinary or a QAT checkpoint.

    A QAT checkpoint gives its float twin (BNs folded, fake quantization off): that is the FP32 file of
    the QAT run and the reference its INT8 file is verified against."""
    from admpff.training.checkpoint import CheckpointError
    from admpff.training.model import ModelConfig, ModelConfigError
    from admpff.training.qat import build_qat_model

    from .checkpoint_io import model_from_checkpoint

    if not is_qat_checkpoint_file(path):
        return model_from_checkpoint(path)
    ckpt = load_checkpoint(path)
    try:
        config = ModelConfig.from_dict(dict(ckpt["config"]["model"], pretrained=None))
        model = build_qat_model(ckpt, mode="float")
    except (CheckpointError, ModelConfigError, TypeError, ValueError) as exc:
        raise ExportError(f"QAT checkpoint {path} cannot be rebuilt: {exc}") from None
    # the training images the fine-tuning used: the export verifies on other crops (verify_on_unseen_crops)
    model.qat_seen_images = frozenset(ckpt["qat"].get("seen_images") or ())
    return model, config, file_sha256(path)


def _crop_seen(origin: str, seen: frozenset) -> bool:
    """Whether a calibration crop (origin ``sysu:/path``, ``regdb:/path``, a video or folder crop) is one of
    the training images a QAT run used.  Only data-set crops can be: QAT reads nothing else."""
    import os

    from admpff.calibration.sources import DATASET_KINDS

    kind, sep, path = str(origin).partition(":")
    return bool(sep) and kind in DATASET_KINDS.values() and os.path.realpath(path) in seen


def seen_by_qat(crops, seen_images) -> int:
    """How many of ``crops`` (a CalibrationSet) the QAT run trained or calibrated on."""
    seen = frozenset(seen_images or ())
    return sum(_crop_seen(o, seen) for o in crops.origins) if seen else 0


def verify_on_unseen_crops(crops, seen_images):
    """The crop set reordered so that the crops a QAT run trained on come first (they may calibrate the
    CPU-INT8 file) and the ones it never saw last, where the export takes its held-back verification
    crops from; each group keeps its order, so a set without seen crops is unchanged."""
    from dataclasses import replace

    seen = frozenset(seen_images or ())
    if not seen:
        return crops
    flags = [_crop_seen(o, seen) for o in crops.origins]
    order = [i for i, f in enumerate(flags) if f] + [i for i, f in enumerate(flags) if not f]
    return replace(crops, images=crops.images[order], modality=crops.modality[order],
                   origins=[crops.origins[i] for i in order])


@contextlib.contextmanager
def _quantized(model):
    from admpff.training.qat import quantized_convs, set_mode
    set_mode(model, "quantize")
    for conv in quantized_convs(model):
        conv.freeze_for_export()
    try:
        yield model
    finally:
        set_mode(model, "float")
        for conv in quantized_convs(model):
            conv.thaw_after_export()


def learned_scales(model) -> dict[str, float]:
    """Activation scales by quantizer name (what the exported QuantizeLinear nodes must carry)."""
    from admpff.training.qat import ActivationQuantizer
    return {name: float(m.scale.detach().abs()) for name, m in model.named_modules()
            if isinstance(m, ActivationQuantizer)}


def _constants_to_initializers(model: onnx.ModelProto) -> int:
    """Constant nodes -> initializers: scales and zero points where ONNX Runtime's quantizer puts them,
    which is what the later passes (the FP16 float part, TensorRT's parser) expect."""
    g = model.graph
    moved = []
    for node in g.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            g.initializer.append(tensor)
            moved.append(node)
    for node in moved:
        g.node.remove(node)
    return len(moved)


def _remove_nodes(graph, nodes) -> None:
    """Drop ``nodes`` and every initializer no remaining node reads."""
    for node in nodes:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def _weights_to_int8(model: onnx.ModelProto) -> int:
    """QuantizeLinear(float weight initializer) -> DequantizeLinear becomes DequantizeLinear(int8 initializer)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {}
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    consumers: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    folded, drop = 0, []
    for node in g.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type != "DequantizeLinear" for u in users):
            continue
        w = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
        scale = value(node.input[1]).astype(np.float64)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.size > 1:
            scale = scale.reshape([-1 if d == axis % w.ndim else 1 for d in range(w.ndim)])
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)  # the trained integers (never -128)
        name = node.input[0] + "_int8"
        g.initializer.append(numpy_helper.from_array(q, name))
        for u in users:
            u.input[0] = name
        drop.append(node)
        folded += 1
    _remove_nodes(g, drop)
    return folded


def _merge_quantizers_of_one_tensor(model: onnx.ModelProto) -> int:
    """One QuantizeLinear per activation tensor: where QAT learned two scales for one tensor (a residual
    block's conv1 and its downsample read the same input), keep the larger (no consumer clips more than it
    learned) and feed every consumer's DequantizeLinear from it.  Why: with two quantizers on one tensor
    OpenVINO ran those four downsample convolutions in f32 (the QAT file was 0.65x the speed of one with
    shared quantizers), and TensorRT, too, fuses one quantizer into the producing layer, not two."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    groups: dict[str, list] = {}
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            groups.setdefault(node.input[0], []).append(node)
    consumers: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    merged, drop = 0, []
    for quantizers in groups.values():
        if len(quantizers) < 2:
            continue
        widest = max(quantizers, key=lambda q: float(numpy_helper.to_array(inits[q.input[1]]).max()))
        keep = quantizers[0]  # the first in graph order, so every consumer still comes after it
        keep.input[1] = widest.input[1]
        if len(keep.input) > 2 and len(widest.input) > 2:
            keep.input[2] = widest.input[2]
        for q in quantizers:
            for dq in consumers.get(q.output[0], []):
                dq.input[0] = keep.output[0]
                dq.input[1] = keep.input[1]
                if len(keep.input) > 2 and len(dq.input) > 2:
                    dq.input[2] = keep.input[2]
            if q is not keep:
                drop.append(q)
                merged += 1
    _remove_nodes(g, drop)
    return merged


def export_qat_qdq(model, contract, out_path: str | Path, *, checkpoint_sha256: str, opset: int = 17,
                   extra_metadata: dict | None = None):
    """Write the Q/DQ file of a QAT model (from :func:`load_export_model`); checked against qdq_check."""
    import torch

    from admpff.runtime.contract import build_metadata
    from admpff.training.qat import quantized_convs

    from .graph_regions import embedding_head_nodes
    from .onnx_export import EmbeddingGraph, save_onnx_atomic, set_metadata
    from .qdq_check import QdqCheckError, assert_tensorrt_qdq
    from .quantize import QuantizeResult

    if not 13 <= opset <= 17:
        raise ExportError(f"opset {opset}: the QAT Q/DQ file is written at opset 13-17 (per-channel Q/DQ needs 13, "
                          "TensorRT 8.5 parses up to 17)")
    t0 = time.perf_counter()
    out_path = Path(out_path)
    names_in, name_out = list(contract.input_names), contract.output_name
    with _quantized(model), tempfile.TemporaryDirectory(prefix="admpff-qat-") as tmp:
        graph = EmbeddingGraph(model, contract).eval()
        images = torch.rand(2, 3, contract.height, contract.width) * 255
        modality = torch.tensor([0, 1], dtype=torch.int32)
        raw = Path(tmp) / "qat.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (images, modality), str(raw), dynamo=False, opset_version=opset,
                              input_names=names_in, output_names=[name_out], do_constant_folding=True,
                              dynamic_axes={names_in[0]: {0: "batch"}, names_in[1]: {0: "batch"},
                                            name_out: {0: "batch"}})
        proto = onnx.load(str(raw))
    _constants_to_initializers(proto)
    folded = _weights_to_int8(proto)
    _merge_quantizers_of_one_tensor(proto)
    scales = learned_scales(model)
    set_metadata(proto, build_metadata(contract, precision="int8-qdq", checkpoint_sha256=checkpoint_sha256,
                                       tensorrt_compatible=True,
                                       extra={"quantizer": "qat", "calibration_method": "qat-learned",
                                              "calibration_samples": 0, "float_nodes": "",
                                              "qat_activation_scales": len(scales), "qat_int8_weights": folded,
                                              **(extra_metadata or {})}))
    onnx.checker.check_model(proto)
    head = sorted(embedding_head_nodes(proto))
    try:
        summary = assert_tensorrt_qdq(proto, max_opset=opset, float_nodes=head)
    except QdqCheckError as exc:
        raise ExportError(f"the QAT Q/DQ graph breaks TensorRT's rules: {exc}") from None
    if summary.quantized_convs != len(quantized_convs(model)):
        raise ExportError(f"{summary.quantized_convs} convolutions carry Q/DQ weights in the exported graph, but "
                          f"the QAT model quantizes {len(quantized_convs(model))}")
    path = save_onnx_atomic(proto, out_path)
    return QuantizeResult(path, "int8-qdq", "qat", "qat-learned", time.perf_counter() - t0, [])


@functools.lru_cache(maxsize=8)
def _peek(path: str) -> tuple[bool, tuple]:
    """(is a QAT checkpoint, its training settings as sorted items); (False, ()) for anything unreadable."""
    try:
        ckpt = load_checkpoint(path)
    except ExportError:
        return False, ()
    train = ckpt.get("config", {}).get("train", {}) if isinstance(ckpt.get("config"), dict) else {}
    return isinstance(ckpt.get("qat"), dict), tuple(sorted((k, repr(v)) for k, v in dict(train).items()))


def is_qat_checkpoint_file(path: str | Path) -> bool:
    return _peek(str(path))[0]


def _train_setting(path: str, key: str, default=None):
    import ast
    value = dict(_peek(str(path))[1]).get(key)
    try:
        return ast.literal_eval(value) if value is not None else default
    except (ValueError, SyntaxError):
        return default


def next_steps_message(args, reports, *, qat: bool) -> str:
    """What to do when INT8 misses its bar, with the exact commands (empty when every INT8 file passed)."""
    import shlex

    missed = [f for f in reports if f.precision in ("int8-qdq", "int8-cpu") and not f.passed]
    if not missed:
        return ""
    ckpt = str(args.checkpoint)
    q = shlex.quote
    export = ["admpff-export", ckpt, "--out", str(args.out)] + (["--name", args.name] if args.name else [])
    export += ["--int8" if f.precision == "int8-qdq" else "--cpu-int8" for f in missed]
    verify = ["--verify-data", args.verify_data] if args.verify_data else []
    calib = [a for spec in args.calib_data for a in ("--calib-data", spec)]
    dataset, data = _train_setting(ckpt, "dataset", "sysu"), _train_setting(ckpt, "data", "ROOT")
    if qat:
        epochs = int(_train_setting(ckpt, "epochs", 2))
        return ("\nThe QAT model still misses the INT8 bar. Fine-tune longer (the run resumes where it stopped) "
                "and export again:\n"
                f"  admpff-train --resume {q(ckpt)} --epochs {epochs + 2}\n"
                f"  {' '.join(q(a) for a in export + calib + verify)}\n")
    qat_dir = str(Path(ckpt).resolve().parent / "qat")
    more = max(4 * int(getattr(args, "calib_samples", 512)), 1024)
    lines = ["", "Post-training INT8 misses its bar. Next steps, cheapest first:",
             "  1. more, or more representative, calibration crops (from the deployment's own cameras):",
             "     " + " ".join(q(a) for a in export + ["--calib-data", "CROPS_OR_VIDEO_FROM_YOUR_CAMERAS",
                                                       "--calib-samples", str(more)] + calib + verify),
             "  2. keep the most sensitive convolutions in float (slower on the device):",
             "     " + " ".join(q(a) for a in export + calib + verify
                                + ["--auto-float", str(max(8, 2 * int(getattr(args, "auto_float", 4) or 4)))]),
             "  3. quantization-aware fine-tuning (full INT8 speed; minutes on a GPU), then export its checkpoint:",
             f"     admpff-train --qat-from {q(ckpt)} --dataset {q(str(dataset))} --data {q(str(data))} "
             f"--out {q(qat_dir)}",
             "     " + " ".join(q(a) for a in ["admpff-export", str(Path(qat_dir) / "last.pt")] + export[2:] + calib + verify),
             ""]
    return "\n".join(lines)
