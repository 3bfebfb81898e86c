"""INT8 variants of the FP32 embedding graph.

* ``quantize_tensorrt_qdq``: explicit Q/DQ for TensorRT 8.5-11: signed int8, zero points 0, per-channel
  weights on axis 0, per-tensor activations, constant FP32 scales, opset <= 17, biases left in float
  (TensorRT's parser takes INT8 Q/DQ, not the int32 bias DequantizeLinear ORT would add), and the
  embedding head left in float.  Quantizer: ONNX Runtime's ``quantize_static`` (default) or NVIDIA Model
  Optimizer's ONNX PTQ where it is installed (``quantizer="modelopt"``).
* ``quantize_cpu_int8``: ONNX Runtime's fast CPU form (QOperator, uint8 activations, int8 weights),
  marked in its metadata as not for TensorRT; on CPUs with AMX its convolutions are steered to ORT's AMX
  QGEMM kernel (exact; ``cpu_kernels``).

Calibration goes through ``admpff.calibration`` (never random data) in strides, so the entropy
calibrator's histograms are merged chunk by chunk instead of holding every activation in memory.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from admpff.calibration.cache_key import Note, stale_reason
from admpff.calibration.calibset import CalibrationSet, content_sha256
from admpff.calibration.reader import CalibrationDataReader, ort_calibrate_method, normalize_calibration_method
from admpff.runtime.atomic import write_json
from admpff.runtime.contract import ModelInfo, build_metadata
from admpff.runtime.engine_sidecar import sha256_file

from .checkpoint_io import ExportError
from .cpu_kernels import resolve_cpu_kernel, steer_convs_to_qgemm
from .graph_regions import embedding_head_nodes
from .onnx_export import read_metadata, save_onnx_atomic, set_metadata

log = logging.getLogger(__name__)

QUANTIZERS = ("ort", "modelopt")
RANGES_FORMAT = "admpff.int8-ranges/1"


@dataclass
class QuantizeResult:
    path: Path
    precision: str
    quantizer: str
    method: str
    seconds: float
    excluded_nodes: list[str] = field(default_factory=list)


class _StridedReader(CalibrationDataReader):
    """ORT's strided calibration counts ``len(reader)`` and ``set_range`` in the same unit; here: batches.

    Every batch has the same size: ORT's histogram collector stacks a chunk's batches with ``np.asarray``
    and fails on a short last one (seen with 447 crops in batches of 8), so that batch is topped up
    with the set's first crops (a handful counted twice; harmless to min/max and histograms alike).
    """

    def get_next(self):
        batch = super().get_next()
        if batch is None or len(self.calset) < self.batch_size:
            return batch
        short = self.batch_size - len(batch[self.images_name])
        if short > 0:
            batch = {self.images_name: np.concatenate([batch[self.images_name], self.calset.images[:short]]),
                     self.modality_name: np.concatenate([batch[self.modality_name], self.calset.modality[:short]])}
        return batch

    def set_range(self, start_index: int, end_index: int) -> None:
        super().set_range(start_index * self.batch_size, end_index * self.batch_size)

    def __len__(self) -> int:
        return -(-len(self.calset) // self.batch_size)


def _stride(total_batches: int, wanted: int) -> int:
    """The largest divisor of ``total_batches`` not above ``wanted`` (ORT needs an exact division)."""
    for s in range(min(wanted, total_batches), 0, -1):
        if total_batches % s == 0:
            return s
    return 1


def _fp32_source(fp32_path: Path) -> tuple[onnx.ModelProto, ModelInfo]:
    model = onnx.load(str(fp32_path))
    info = ModelInfo.from_metadata(read_metadata(model), source=fp32_path.name)
    if info.precision != "fp32":
        raise ExportError(f"{fp32_path.name} is {info.precision}; quantization starts from the FP32 file")
    return model, info


def _check_calibration(calset: CalibrationSet | None, info: ModelInfo) -> None:
    if calset is None or len(calset) == 0:
        raise ExportError("INT8 needs calibration data: pass --calib-data with a folder of person crops, a video "
                          "(crops come from the detector), or sysu:ROOT / regdb:ROOT training data")
    c = info.contract
    if calset.images.shape[1:] != (3, c.height, c.width):
        raise ExportError(f"calibration tensors are {calset.images.shape[1:]}, the model takes (3, {c.height}, {c.width})")


def _ranges_key(fp32_path: Path, info: ModelInfo, calset: CalibrationSet, method: str, quant_format: str,
                options: dict, exclude: list[str], batch_size: int) -> dict:
    """Everything that decides the activation ranges ONNX Runtime computes (see ``cache_key``)."""
    import onnxruntime

    return {"format": RANGES_FORMAT, "model_sha256": sha256_file(fp32_path),
            "checkpoint_sha256": info.checkpoint_sha256, "calibration_sha256": content_sha256(calset),
            "calibration_count": len(calset), "method": method, "quantizer": "ort", "quant_format": quant_format,
            "options": options, "excluded_nodes": sorted(exclude), "batch_size": int(batch_size),
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def _reuse_ranges(ranges_cache: Path, key: dict, ort_cache: Path, note) -> None:
    """Hand ORT the cached ranges (as its own JSON, in the work folder) only when ``key`` matches."""
    if not ranges_cache.is_file():
        return
    try:
        stored = json.loads(ranges_cache.read_text())
        reason = stale_reason(stored.get("key"), key) if isinstance(stored, dict) else "not a ranges cache"
    except (OSError, ValueError) as exc:
        stored, reason = None, f"unreadable ({exc})"
    if reason is None and isinstance(stored.get("ort_cache"), dict):
        ort_cache.write_text(json.dumps(stored["ort_cache"]))
        note(f"reusing INT8 ranges {ranges_cache.name} (same model, calibration crops and settings)")
    else:
        note(f"recomputing INT8 ranges {ranges_cache.name}: {reason or 'it holds no ranges'}")


def _ort_quantize(fp32_path: Path, out_path: Path, calset: CalibrationSet, method: str, *, qdq: bool,
                  exclude: list[str], ranges_cache: Path | None, batch_size: int, stride_batches: int,
                  source: Path | None = None, info: ModelInfo | None = None, note: Note = None,
                  quiet: bool = False) -> None:
    """``fp32_path``: the prepared graph in the work folder; ``source``/``info``: the exported FP32 file it
    came from, whose hash keys the ranges cache."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    reader = _StridedReader(calset, batch_size=batch_size)
    extra = {
        "CalibStridedMinMax": _stride(len(reader), stride_batches),  # bounded memory, merged histograms
        "CalibPercentile": 99.999,
    }
    if qdq:
        extra.update({"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                      "DedicatedQDQPair": False})
    op_types = ["Conv", "Add", "MaxPool"] if qdq else ["Conv", "Add", "Relu"]
    activation = QuantType.QInt8 if qdq else QuantType.QUInt8
    cache_kw, ort_cache, key = {}, None, None
    if ranges_cache is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        # ORT >= 1.25 reuses computed ranges, but keys its cache on the method alone (and dies on another
        # one); it gets a private copy in the work folder, and our file records what produced it.
        key = _ranges_key(source or fp32_path, info or _fp32_source(source or fp32_path)[1], calset, method,
                          "qdq" if qdq else "qoperator",
                          dict(extra, op_types=op_types, activation=str(activation), per_channel=True),
                          exclude, batch_size)
        ort_cache = fp32_path.parent / "ort-ranges.json"
        _reuse_ranges(ranges_cache, key, ort_cache, note or log.warning)
        cache_kw["calibration_cache_path"] = str(ort_cache)
    # ONNX Runtime prints its calibration progress ("Collecting tensor data ...") with print().
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        _quantize_static(quantize_static, fp32_path, out_path, reader, qdq, op_types, activation, exclude, method,
                         extra, cache_kw)
    if ort_cache is not None and ort_cache.is_file():
        write_json(ranges_cache, {"format": RANGES_FORMAT, "key": key,
                                  "ort_cache": json.loads(ort_cache.read_text())})


def _quantize_static(quantize_static, fp32_path, out_path, reader, qdq, op_types, activation, exclude, method,
                     extra, cache_kw) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType

    quantize_static(
        str(fp32_path), str(out_path), reader,
        quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
        # QOperator: the stem MaxPool feeds the modality Where, which has no quantized kernel, and ORT
        # then loses the MaxPool's float output; Conv/Add/Relu carry the speed-up anyway.
        op_types_to_quantize=op_types,
        per_channel=True,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=ort_calibrate_method(method),
        extra_options=extra,
        **cache_kw,
    )


def _modelopt_quantize(fp32_path: Path, out_path: Path, calset: CalibrationSet, method: str, *, exclude: list[str],
                       opset: int) -> None:
    try:
        from modelopt.onnx.quantization import quantize as modelopt_quantize
    except ImportError:
        raise ExportError("NVIDIA Model Optimizer is not installed here: install admpff[modelopt] in its own venv "
                          "(it brings onnxruntime-gpu, which shadows onnxruntime) or use --quantizer ort") from None
    from admpff.calibration.reader import modelopt_calibration_method, to_modelopt_calibration_data

    modelopt_quantize(str(fp32_path), quantize_mode="int8", calibration_data=to_modelopt_calibration_data(calset),
                      calibration_method=modelopt_calibration_method(method), calibration_eps=["cpu"],
                      high_precision_dtype="fp32", opset=opset,
                      nodes_to_exclude=[f"^{n}$" for n in exclude], output_path=str(out_path))
    # Model Optimizer 0.47 writes opset 19 whatever is asked; with FP32 scales its Q/DQ converts down
    # losslessly (checked: identical outputs), which TensorRT 8.5 (JetPack 5) needs.
    model = onnx.load(str(out_path))
    written = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if written > opset:
        from onnx import version_converter
        onnx.save(version_converter.convert_version(model, opset), str(out_path))


def _prepare(fp32_path: Path, work: Path) -> Path:
    """ORT's recommended pre-processing (shape inference) on a copy whose every node has a name."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path))
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    named = work / "named.onnx"
    onnx.save(model, str(named))
    prepared = work / "prepared.onnx"
    # No ORT graph optimisation: it would fold/fuse nodes into forms TensorRT's parser does not expect.
    quant_pre_process(str(named), str(prepared), skip_optimization=True, skip_symbolic_shape=False)
    return prepared


@contextlib.contextmanager
def _workspace(fp32_path: Path, calset: CalibrationSet | None, extra_exclude: list[str] | None):
    """Checked inputs, a prepared copy of the FP32 graph and the nodes to leave in float."""
    _, info = _fp32_source(fp32_path)
    _check_calibration(calset, info)
    with tempfile.TemporaryDirectory(prefix="admpff-q-") as tmp:
        work = Path(tmp)
        prepared = _prepare(fp32_path, work)
        exclude = sorted(embedding_head_nodes(onnx.load(str(prepared)))) + list(extra_exclude or [])
        yield info, prepared, exclude, work


def _finish(out_tmp: Path, out_path: Path, info: ModelInfo, precision: str, trt_ok: bool, details: dict,
            transform=None) -> Path:
    model = onnx.load(str(out_tmp))
    if transform is not None:
        transform(model, details)
    set_metadata(model, build_metadata(info.contract, precision=precision, checkpoint_sha256=info.checkpoint_sha256,
                                       tensorrt_compatible=trt_ok, extra=details))
    onnx.checker.check_model(model)
    return save_onnx_atomic(model, out_path)


def quantize_tensorrt_qdq(fp32_path: str | Path, out_path: str | Path, calset: CalibrationSet, *,
                          method: str = "percentile", quantizer: str = "ort", extra_exclude: list[str] | None = None,
                          ranges_cache: str | Path | None = None, batch_size: int = 8, stride_batches: int = 4,
                          opset: int = 17, note: Note = None, quiet: bool = False) -> QuantizeResult:
    """``ranges_cache``: where computed activation ranges are kept and reused while everything that
    produced them is the same (see ``cache_key``); ``note`` gets the one line that says reused or why not."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    method = normalize_calibration_method(method)
    if quantizer not in QUANTIZERS:
        raise ExportError(f"unknown quantizer {quantizer!r}; choose one of {', '.join(QUANTIZERS)}")
    t0 = time.perf_counter()
    with _workspace(fp32_path, calset, extra_exclude) as (info, prepared, exclude, work):
        raw = work / "qdq.onnx"
        if quantizer == "ort":
            _ort_quantize(prepared, raw, calset, method, qdq=True, exclude=exclude,
                          ranges_cache=Path(ranges_cache) if ranges_cache else None, batch_size=batch_size,
                          stride_batches=stride_batches, source=fp32_path, info=info, note=note, quiet=quiet)
        else:
            _modelopt_quantize(prepared, raw, calset, method, exclude=exclude, opset=opset)
        path = _finish(raw, out_path, info, "int8-qdq", True,
                       {"quantizer": quantizer, "calibration_method": method, "calibration_samples": len(calset),
                        "float_nodes": ",".join(extra_exclude or [])})
    return QuantizeResult(path, "int8-qdq", quantizer, method, time.perf_counter() - t0, list(extra_exclude or []))


def quantize_cpu_int8(fp32_path: str | Path, out_path: str | Path, calset: CalibrationSet, *,
                      method: str = "percentile", extra_exclude: list[str] | None = None,
                      ranges_cache: str | Path | None = None, batch_size: int = 8,
                      stride_batches: int = 4, cpu_kernel: str = "auto", note: Note = None,
                      quiet: bool = False) -> QuantizeResult:
    """``cpu_kernel``: "qgemm" (AMX where the CPU has it), "convsym" (ORT's default, VNNI) or "auto"
    (qgemm on a CPU with AMX-INT8, which is where the file is expected to run); see ``cpu_kernels``."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    method = normalize_calibration_method(method)
    try:
        kernel = resolve_cpu_kernel(cpu_kernel)
    except ValueError as exc:
        raise ExportError(str(exc)) from None

    def choose_kernel(model: onnx.ModelProto, details: dict) -> None:
        details["cpu_kernel"] = kernel
        if kernel == "qgemm":
            details["qgemm_convs"] = steer_convs_to_qgemm(model)

    t0 = time.perf_counter()
    with _workspace(fp32_path, calset, extra_exclude) as (info, prepared, exclude, work):
        raw = work / "cpu.onnx"
        _ort_quantize(prepared, raw, calset, method, qdq=False, exclude=exclude,
                      ranges_cache=Path(ranges_cache) if ranges_cache else None, batch_size=batch_size,
                      stride_batches=stride_batches, source=fp32_path, info=info, note=note, quiet=quiet)
        path = _finish(raw, out_path, info, "int8-cpu", False,
                       {"quantizer": "ort-qoperator-u8s8", "calibration_method": method,
                        "calibration_samples": len(calset), "note": "ONNX Runtime CPU only; not for TensorRT"},
                       transform=choose_kernel)
    return QuantizeResult(path, "int8-cpu", "ort", method, time.perf_counter() - t0, list(extra_exclude or []))
