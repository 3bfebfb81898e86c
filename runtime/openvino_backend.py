"""OpenVINO backend: the exported ONNX files (FP32, FP16, INT8 Q/DQ) or OpenVINO IR on a CPU.

The contract comes from the file itself: OpenVINO keeps an ONNX file's ``metadata_props`` under the
model's ``rt_info["framework"]`` and writes them into an IR it saves, so an ``.xml`` made by
:func:`save_ir` carries the same contract as the ``.onnx`` it came from.

``precision`` sets OpenVINO's inference precision hint: ``default`` leaves the CPU plugin's choice
(bf16 where the CPU has AMX or AVX512-BF16, else f32); ``auto`` (the default) is that where the CPU has
AMX and f32 elsewhere, as measured (see :func:`resolve_precision`); ``f32``, ``bf16`` and ``f16`` pin
it; a precision the CPU lacks is refused when the model loads.  A Q/DQ (INT8) file runs its quantized part in
INT8 whatever the hint; the hint then covers the rest of the graph.

``openvino`` is imported when an embedder is made, never at module import.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .contract import ModelInfo
from .cpu_info import cpu_flags
from .embedder import Embedder, ModelLoadError

__all__ = ["OpenVINOEmbedder", "PRECISIONS", "cpu_capabilities", "save_ir", "read_contract_metadata",
           "onnx_metadata", "unsupported_reason"]

#: precision name -> OpenVINO's INFERENCE_PRECISION_HINT value (None: the plugin's default); "auto" is
#: resolved by :func:`resolve_precision`
PRECISIONS = {"auto": None, "default": None, "f32": "f32", "bf16": "bf16", "f16": "f16"}


def cpu_has_amx() -> bool:
    """True where the CPU has AMX-BF16 (Linux ``/proc/cpuinfo`` flags; False where that cannot be read)."""
    return "amx_bf16" in cpu_flags()


def resolve_precision(precision: str, device: str = "CPU") -> str | None:
    """The INFERENCE_PRECISION_HINT to set (None: leave the plugin's default).

    ``auto`` is what measured fastest (README, "Measured"): the plugin's default where the CPU has AMX
    (bf16 there: 85.8 img/s against 14.0 pinned to f32 on the FP32 file), f32 elsewhere, because the
    plugin also picks bf16 on CPUs with AVX512-BF16 but no AMX, where it ran the FP32 file at 0.63x of f32.
    ``default`` always leaves the plugin's choice."""
    if precision == "auto":
        return None if device != "CPU" or cpu_has_amx() else "f32"
    return PRECISIONS[precision]
#: what OPTIMIZATION_CAPABILITIES must list for a pinned precision
_CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}

OPENVINO_MISSING = "openvino is not installed (pip install 'admpff[runtime]' or pip install openvino)"


def _import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise ModelLoadError(OPENVINO_MISSING) from None
    return ov


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # OpenVINO's messages start with a "Check '...' failed at <source path>" line; the reason follows.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Check ", "Exception from"))]
    line = (useful or lines or [type(exc).__name__])[0]
    return line.split(" Available frontends:")[0].strip()


def cpu_capabilities(core, device: str = "CPU") -> list[str]:
    """The device's OPTIMIZATION_CAPABILITIES, e.g. ``['FP32', 'BF16', 'INT8', ...]``."""
    return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]


def read_contract_metadata(model) -> dict[str, str]:
    """The ONNX ``metadata_props`` OpenVINO carries in ``rt_info["framework"]`` (empty if none)."""
    if not model.has_rt_info(["framework"]):
        return {}
    framework = model.get_rt_info(["framework"]).astype(dict)
    return {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in framework.items()}


@contextlib.contextmanager
def _native_stderr_held_back():
    """Hold back what native code writes to file descriptor 2 (OpenVINO's ONNX reader logs protobuf
    parse errors through absl before raising); pass it on only if the block succeeds, because on
    failure the exception already says what went wrong, in the one line a user should see."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        text = held.read()
        if text:
            sys.stderr.write(text.decode(errors="replace"))


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` read straight from its protobuf top level (ModelProto field 14),
    skipping the graph by its length: milliseconds for a 300 MB file, and no ``onnx`` package needed.
    Returns {} for anything that does not parse (the real reader then reports the problem)."""
    import mmap

    props: dict[str, str] = {}
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos, end = 0, len(buf)
            while pos < end:
                key, pos = _varint(buf, pos)
                field, wire = key >> 3, key & 7
                if wire == 0:
                    _, pos = _varint(buf, pos)
                elif wire == 1:
                    pos += 8
                elif wire == 5:
                    pos += 4
                elif wire == 2:
                    length, pos = _varint(buf, pos)
                    if field == 14:  # StringStringEntryProto {1: key, 2: value}
                        entry, epos, eend = {}, pos, pos + length
                        while epos < eend:
                            ekey, epos = _varint(buf, epos)
                            elen, epos = _varint(buf, epos)
                            entry[ekey >> 3] = bytes(buf[epos:epos + elen]).decode("utf-8", "replace")
                            epos += elen
                        props[entry.get(1, "")] = entry.get(2, "")
                    pos += length
                else:
                    return {}
                if pos > end:
                    return {}
    except (OSError, ValueError, IndexError):
        return {}
    return props


#: admpff precisions OpenVINO cannot take: ONNX Runtime's QOperator CPU-INT8 file (QLinearConv with
#: uint8 activations) crashes OpenVINO 2026.4's ONNX reader (a segmentation fault, checked), so it is refused
#: before OpenVINO sees it; OpenVINO runs the Q/DQ file (.int8.onnx) in INT8 instead.
NOT_FOR_OPENVINO = {"int8-cpu": "ONNX Runtime's QOperator CPU-INT8 file, which OpenVINO cannot read; run it "
                                "with --backend onnxruntime, or give OpenVINO the Q/DQ file (.int8.onnx)"}


def unsupported_reason(path: str | Path) -> str | None:
    """Why OpenVINO must not be given this file (None: nothing known against it)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    precision = onnx_metadata(path).get("admpff.precision")
    return NOT_FOR_OPENVINO.get(precision or "")


def _read_model(core, path: Path):
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise ModelLoadError(f"cannot load {path.name}: its weights file {path.with_suffix('.bin').name} is missing")
    reason = unsupported_reason(path)
    if reason:
        raise ModelLoadError(f"cannot load {path.name} with OpenVINO: it is {reason}")
    try:
        with _native_stderr_held_back():
            return core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError and private types for unreadable files
        raise ModelLoadError(f"cannot load {path.name}: OpenVINO cannot read it ({_first_line(exc)})") from None


class OpenVINOEmbedder(Embedder):
    """Embeddings through OpenVINO's runtime (CPU plugin by default), one synchronous infer request."""

    def __init__(self, path: str | Path, precision: str = "auto", threads: int | None = None,
                 device: str = "CPU", performance_hint: str = "LATENCY"):
        ov = _import_openvino()
        path = Path(path)
        if precision not in PRECISIONS:
            raise ModelLoadError(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        hint = resolve_precision(precision, device)
        core = ov.Core()
        if device not in core.available_devices:
            raise ModelLoadError(f"OpenVINO has no device {device!r} here (available: {', '.join(core.available_devices)})")
        if precision in _CAPABILITY:
            caps = cpu_capabilities(core, device)
            if _CAPABILITY[precision] not in caps:
                raise ModelLoadError(f"this {device} cannot run {precision}: OpenVINO reports capabilities "
                                     f"{', '.join(caps)}; use --precision f32 or auto")
        model = _read_model(core, path)
        try:
            info = ModelInfo.from_metadata(read_contract_metadata(model), source=path.name)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        super().__init__(info, path)
        self._check_io(model)
        self._make_batch_dynamic(ov, model)
        config = {"PERFORMANCE_HINT": performance_hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO cannot compile {path.name} for {device}: {_first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()
        self.device = device
        self.requested_precision = precision
        #: what the plugin really runs the non-quantized part in (e.g. 'bf16' for precision=auto on AMX)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))

    def _check_io(self, model) -> None:
        c = self.contract
        inputs = {i.get_any_name(): i for i in model.inputs}
        outputs = {name: o for o in model.outputs for name in o.get_names()}
        if set(inputs) != set(c.input_names) or c.output_name not in outputs:
            raise ModelLoadError(f"{self.path.name} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                                 f"expected inputs {list(c.input_names)} and output {c.output_name!r}")
        shape = inputs[c.input_names[0]].get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        if len(dims) != 4 or dims[1:] != [3, c.height, c.width]:
            raise ModelLoadError(f"{self.path.name} takes images of shape {shape}, but its contract says "
                                 f"[batch, 3, {c.height}, {c.width}]")
        out_shape = outputs[c.output_name].get_partial_shape()
        if out_shape.rank.is_dynamic or out_shape.rank.get_length() != 2 or (
                out_shape[1].is_static and out_shape[1].get_length() != self.dim):
            raise ModelLoadError(f"{self.path.name} emits {out_shape}, expected [batch, {self.dim}]")

    def _make_batch_dynamic(self, ov, model) -> None:
        """A file exported with a fixed batch (e.g. for a static TensorRT profile) is reshaped to any batch;
        when its graph cannot be (a hard-coded Reshape), the fixed batch becomes ``max_batch``."""
        c = self.contract
        images = next(i for i in model.inputs if i.get_any_name() == c.input_names[0])
        batch = images.get_partial_shape()[0]
        if batch.is_dynamic:
            return
        try:
            model.reshape(dict(zip(c.input_names, (ov.PartialShape([-1, 3, c.height, c.width]),
                                                   ov.PartialShape([-1])))))
        except Exception:
            self.max_batch = batch.get_length()

    def _infer(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        names = self.contract.input_names
        # share_inputs: OpenVINO reads the caller's contiguous arrays in place instead of copying them.
        # zip: a single-input (modality-fixed) export takes only the images
        result = self.request.infer(dict(zip(names, (images, modality))), share_inputs=True)
        return np.array(result[self.compiled.output(self.contract.output_name)], np.float32, copy=True)

    def describe(self) -> str:
        return (f"openvino[{self.device} {self.inference_precision}, {self.threads} threads] "
                f"{self.path.name} ({self.info.precision})")


def save_ir(source: str | Path, destination: str | Path, *, compress_to_fp16: bool = False) -> Path:
    """Convert an exported ``.onnx`` into OpenVINO IR (``.xml`` + ``.bin``), keeping its admpff metadata.

    OpenVINO writes both files into a scratch folder; each then goes into place through
    :mod:`admpff.runtime.atomic`, ``.bin`` first, so a reader never sees a half-written file.
    """
    ov = _import_openvino()
    source, destination = Path(source), Path(destination)
    if destination.suffix.lower() != ".xml":
        raise ModelLoadError(f"OpenVINO IR is written to an .xml path, not {destination.name!r}")
    model = _read_model(ov.Core(), source)
    if not read_contract_metadata(model):
        raise ModelLoadError(f"{source.name} carries no admpff metadata (was it exported with admpff-export?)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".ir-") as tmp:
        tmp_xml = Path(tmp) / destination.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        for written, final in ((tmp_xml.with_suffix(".bin"), destination.with_suffix(".bin")),
                               (tmp_xml, destination)):
            with open(written, "rb") as src:
                atomic_write(final, lambda dst, src=src: shutil.copyfileobj(src, dst, 1 << 20))
    return destination
