"""``admpff-build-engine``: ONNX -> TensorRT engine (+ JSON sidecar), on the device that will run it.

TensorRT engines are tied to the TensorRT release and the GPU, so they are built on the target (a
Jetson, a desktop GPU), never shipped.  What "FP16" or "INT8" means depends on the TensorRT version:

* 11.x: always strongly typed, no precision flags: precision comes only from the ONNX file (the
  ``.fp16.onnx`` for FP16, the Q/DQ ``.int8.onnx`` for INT8).
* 10.x: FP16/Q/DQ files build as STRONGLY_TYPED networks with no flags; an FP32 file asked for FP16
  uses the FP16 builder flag (weak typing, deprecated since 10.12).
* 8.5/8.6 (JetPack 5.1/6.0) and 10.3 (JetPack 6.1/6.2): the FP32 file with the FP16 flag; the Q/DQ
  file with INT8 + FP16 flags (8.x also needs the EXPLICIT_BATCH network flag).

:func:`plan_build` decides that as a pure function (tested without TensorRT); :func:`build_engine`
is a thin layer over TensorRT's documented Python API.  No torch anywhere.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from admpff.runtime.engine_sidecar import (EngineSidecar, atomic_write_bytes, sha256_file, sidecar_path,
                                           write_sidecar)

TRT_MISSING_MESSAGE = ("TensorRT is not installed here: run admpff-build-engine on the target device "
                       "(Jetson: JetPack's python3-libnvinfer; desktop: pip install tensorrt)")
ONNX_PRECISIONS = ("fp32", "fp16", "int8-qdq", "int8-cpu")
REQUESTS = ("auto", "fp32", "fp16", "int8")
DEFAULT_BATCH = (1, 8, 32)
DEFAULT_DLA_BATCH = (8, 8, 8)
DEFAULT_WORKSPACE_GB = 2.0
_PRECISION_SUFFIX = re.compile(r"\.(int8\.fp16|int8[-_]?cpu|cpu[-_]?int8|int8|qdq|fp16|fp32)$", re.IGNORECASE)


class EngineBuildError(RuntimeError):
    """Any failure of the engine build, with a one-line message meant for the user."""


class BuildPlanError(EngineBuildError, ValueError):
    """The requested build is impossible for this TensorRT version / ONNX file."""


class TensorRTUnavailable(EngineBuildError):
    """TensorRT (or cuda-python) cannot be imported here."""


# ------------------------------------------------------------------------------------------------
# The plan: pure logic
# ------------------------------------------------------------------------------------------------
@dataclass
class BuildPlan:
    """What to ask TensorRT for.  Flag names are attribute names of ``trt.BuilderFlag`` /
    ``trt.NetworkDefinitionCreationFlag``."""

    trt_version: str
    onnx_precision: str              # what the ONNX file is (admpff.precision)
    requested: str                   # what the user asked for (auto|fp32|fp16|int8)
    precision: str                   # what the engine will compute in: fp32 | fp16 | int8
    strongly_typed: bool
    builder_flags: list[str] = field(default_factory=list)
    network_flags: list[str] = field(default_factory=list)
    explicit_batch: bool = False     # 8.x: EXPLICIT_BATCH network flag needed for ONNX
    expected_onnx: str = "fp32"      # which exported file this plan builds: fp32 | fp16 | int8-qdq
    dla_core: int | None = None
    batch: tuple[int, int, int] = DEFAULT_BATCH
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        typing = "strongly typed" if self.strongly_typed else "weakly typed"
        flags = ", ".join(self.builder_flags) or "no builder flags"
        dla = f", DLA core {self.dla_core}" if self.dla_core is not None else ""
        return (f"TensorRT {self.trt_version}: {self.precision.upper()} engine from the {self.onnx_precision} ONNX, "
                f"{typing}, {flags}{dla}, batch min/opt/max {self.batch[0]}/{self.batch[1]}/{self.batch[2]}")


def parse_trt_version(version: str) -> tuple[int, int, int]:
    nums = []
    for token in str(version).strip().split(".")[:3]:
        m = re.match(r"\d+", token)
        if not m:
            break
        nums.append(int(m.group()))
    if not nums:
        raise BuildPlanError(f"cannot read the TensorRT version {version!r}")
    while len(nums) < 3:
        nums.append(0)
    return tuple(nums)  # type: ignore[return-value]


def parse_batch(text: str | Sequence[int] | int | None, dla: int | None = None) -> tuple[int, int, int]:
    """``"1,8,32"`` -> (1, 8, 32); ``"8"`` -> static (8, 8, 8); None -> the default profile."""
    if text is None:
        return DEFAULT_DLA_BATCH if dla is not None else DEFAULT_BATCH
    if isinstance(text, int):
        values: list = [text]
    elif isinstance(text, str):
        values = [v.strip() for v in text.split(",")]
    else:
        values = list(text)
    try:
        nums = [int(v) for v in values]
    except (TypeError, ValueError):
        raise BuildPlanError(f"--batch {text!r}: expected MIN,OPT,MAX (e.g. 1,8,32) or one number for a "
                             "static batch") from None
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3:
        raise BuildPlanError(f"--batch {text!r}: expected three numbers MIN,OPT,MAX (e.g. 1,8,32)")
    lo, opt, hi = nums
    if not (1 <= lo <= opt <= hi):
        raise BuildPlanError(f"--batch {text!r}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def model_base_name(onnx_name: str | None) -> str:
    """``reid.int8-cpu.onnx`` -> ``reid`` (the stem the export wrote every variant under)."""
    name = Path(onnx_name or "model.onnx").name
    if name.lower().endswith(".onnx"):
        name = name[: -len(".onnx")]
    return _PRECISION_SUFFIX.sub("", name) or name


def plan_build(trt_version: str, onnx_precision: str, requested: str = "auto", dla: int | None = None,
               batch: str | Sequence[int] | None = None, *, onnx_name: str | None = None,
               tensorrt_compatible: bool = True) -> BuildPlan:
    """Decide network flags, builder flags and typing for this TensorRT version and ONNX file.

    Raises :class:`BuildPlanError` with a message telling the user which file or option to use.
    """
    base = model_base_name(onnx_name)
    fname = Path(onnx_name).name if onnx_name else "this ONNX"
    requested = (requested or "auto").lower()
    if requested not in REQUESTS:
        raise BuildPlanError(f"--precision {requested!r}: choose one of {', '.join(REQUESTS)}")
    onnx_precision = (onnx_precision or "").lower()
    if onnx_precision == "int8-cpu" or not tensorrt_compatible:
        raise BuildPlanError(f"{fname} is the ONNX Runtime CPU variant (QOperator/uint8, not TensorRT compatible); "
                             f"use {base}.int8.onnx (the Q/DQ export) for a TensorRT INT8 engine")
    if onnx_precision not in ONNX_PRECISIONS:
        raise BuildPlanError(f"{fname} has precision {onnx_precision!r}; expected one of fp32, fp16, int8-qdq "
                             "(was it exported with admpff-export?)")
    if dla is not None and (not isinstance(dla, int) or dla < 0):
        raise BuildPlanError(f"--dla {dla!r}: expected a DLA core number (0 or 1)")
    profile = parse_batch(batch, dla)

    major, minor, _patch = parse_trt_version(trt_version)
    if major < 8 or (major == 8 and minor < 5):
        raise BuildPlanError(f"TensorRT {trt_version} is too old: admpff needs 8.5+ (JetPack 5.1) for the "
                             "name-based execute_async_v3 API")
    if major == 9:
        raise BuildPlanError(f"TensorRT {trt_version} (the 9.x LLM preview line) is not supported: use 8.5/8.6, "
                             "10.x or 11.x")

    # What the engine computes in, from the file and the request.
    if onnx_precision == "fp32":
        if requested == "int8":
            raise BuildPlanError(f"{fname} is FP32 and has no Q/DQ nodes: export INT8 with admpff-export --int8 "
                                 f"and build {base}.int8.onnx")
        precision = "fp16" if requested == "fp16" else "fp32"
    elif onnx_precision == "fp16":
        if requested in ("fp32", "int8"):
            raise BuildPlanError(f"{fname} is an FP16 ONNX; for a {requested.upper()} engine build "
                                 f"{base}.onnx" + (" (FP32)" if requested == "fp32" else ".int8.onnx"))
        precision = "fp16"
    else:  # int8-qdq
        if requested in ("fp32", "fp16"):
            raise BuildPlanError(f"{fname} is the INT8 Q/DQ ONNX and always builds INT8; for {requested.upper()} "
                                 f"build {base}.onnx" + (" with --precision fp16" if requested == "fp16" else ""))
        precision = "int8"

    plan = BuildPlan(trt_version=str(trt_version), onnx_precision=onnx_precision, requested=requested,
                     precision=precision, strongly_typed=False, expected_onnx=onnx_precision,
                     dla_core=dla, batch=profile)

    if dla is not None:
        if precision == "fp32":
            raise BuildPlanError("DLA runs FP16 or INT8 only: pass --precision fp16"
                                 + ("" if major < 11 else f" with {base}.fp16.onnx") + f" or build {base}.int8.onnx")
        if not (profile[0] == profile[1] == profile[2]):
            raise BuildPlanError(f"DLA needs a static batch (min = opt = max), got --batch "
                                 f"{profile[0]},{profile[1]},{profile[2]}: pass e.g. --batch {profile[1]}")

    if major >= 11:
        # 11.x: strongly typed always; precision flags and calibrators are gone.
        plan.strongly_typed = True
        if onnx_precision == "fp32" and precision == "fp16":
            raise BuildPlanError(f"TensorRT {trt_version} takes precision only from the ONNX (no FP16 flag since 11.0): "
                                 f"export with admpff-export --fp16 and build {base}.fp16.onnx")
    else:
        # JetPack 5 (8.x), JetPack 6 (10.3) and DLA before 11 take the weak-typing flags: 8.x has no strong
        # typing, and TensorRT documents strongly typed DLA builds only from 11.4.1.
        flags_path = (major == 8 or (major == 10 and minor == 3) or dla is not None)
        if onnx_precision == "fp16":
            if major == 8:
                raise BuildPlanError("TensorRT 8.x has no strongly typed networks, so it would not honour an FP16 "
                                     f"ONNX: build the FP32 file {base}.onnx with --precision fp16")
            if dla is not None:
                raise BuildPlanError(f"DLA builds before TensorRT 11 use the FP16 builder flag: build the FP32 file "
                                     f"{base}.onnx with --precision fp16")
            plan.strongly_typed = True  # 10.x (10.3 included) builds the FP16 file as typed, no flags
            plan.network_flags = ["STRONGLY_TYPED"]
        elif flags_path:
            if precision == "fp16":
                plan.builder_flags = ["FP16"]
            elif precision == "int8":
                plan.builder_flags = ["INT8", "FP16"]  # FP16 so the non-quantized layers are not FP32
            if major == 10 and minor >= 12 and plan.builder_flags:
                plan.warnings.append(f"TensorRT {trt_version}: the FP16/INT8 builder flags (weak typing) are "
                                     "deprecated since 10.12 and removed in 11")
        elif onnx_precision == "int8-qdq":
            plan.strongly_typed = True  # 10.x: Q/DQ file as a STRONGLY_TYPED network, no precision flags
            plan.network_flags = ["STRONGLY_TYPED"]
        elif precision == "fp16":
            plan.builder_flags = ["FP16"]
            if minor >= 12:
                plan.warnings.append(
                    f"TensorRT {trt_version}: building FP16 from the FP32 ONNX uses the FP16 builder flag "
                    "(weak typing), deprecated since 10.12 and removed in 11: prefer admpff-export --fp16 "
                    f"and build {base}.fp16.onnx")
        if major == 8:
            plan.explicit_batch = True
            plan.network_flags = ["EXPLICIT_BATCH"]

    if dla is not None:
        plan.builder_flags.append("GPU_FALLBACK")
        plan.warnings.append("DLA: layers DLA cannot run fall back to the GPU silently (GPU_FALLBACK); "
                             "inspect the engine to see where each layer runs")
        if precision == "int8" and major < 11:
            plan.warnings.append(f"DLA INT8 from Q/DQ on TensorRT {trt_version}: older DLA releases document "
                                 "only calibrated INT8, so quantized layers may run on the GPU instead")
    return plan


def is_strongly_typed_build(trt_version: str, dla: int | None = None) -> bool:
    """Whether this TensorRT builds a Q/DQ file strongly typed (what ``plan_build`` decides)."""
    major, minor, _ = parse_trt_version(trt_version)
    return major >= 11 or (major == 10 and minor != 3 and dla is None)


def choose_qdq_file(trt_version: str, onnx_path: str | os.PathLike, float_dtype: str | None,
                    dla: int | None = None) -> tuple[Path, str | None]:
    """Which of the two INT8 Q/DQ files this TensorRT should build, and a line saying why when it swaps.

    ``<name>.int8.onnx`` (FP32 float part, FP32 scales, opset 17) is for the flag builds (8.5/8.6, 10.3,
    DLA before 11), where the FP16 flag runs the float layers in FP16.  A strongly typed build (10.4+,
    11.x) keeps the types of the file, so there ``<name>.int8.fp16.onnx`` (FP16 float part) is taken
    when it sits next to the given file.  Pure: tested without TensorRT.
    """
    path = Path(onnx_path)
    base = model_base_name(path.name)
    typed = is_strongly_typed_build(trt_version, dla)
    major = parse_trt_version(trt_version)[0]
    if float_dtype != "fp16" and typed:
        sibling = path.with_name(f"{base}.int8.fp16.onnx")
        if sibling.is_file():
            return sibling, (f"TensorRT {trt_version} builds Q/DQ strongly typed: building {sibling.name} "
                             f"(FP16 between the Q/DQ pairs; {path.name} would run those layers in FP32)")
        return path, (f"warning: TensorRT {trt_version} builds {path.name} strongly typed, so the layers outside "
                      f"its Q/DQ pairs run in FP32; admpff-export --int8 also writes {base}.int8.fp16.onnx, "
                      f"which runs them in FP16")
    if float_dtype == "fp16" and not typed:
        sibling = path.with_name(f"{base}.int8.onnx")
        if sibling.is_file():
            return sibling, (f"TensorRT {trt_version} builds Q/DQ with the INT8 + FP16 flags: building "
                             f"{sibling.name} (opset 17, FP32 scales) instead of {path.name}")
        if major == 8:
            raise BuildPlanError(f"{path.name} is opset 19 with FP16 scales, for strongly typed TensorRT 10.4+; "
                                 f"TensorRT {trt_version} parses opset <= 17: build {base}.int8.onnx")
    return path, None


# ------------------------------------------------------------------------------------------------
# Reading the ONNX (needs the onnx package, not TensorRT)
# ------------------------------------------------------------------------------------------------
@dataclass
class OnnxInfo:
    path: Path
    sha256: str
    metadata: dict[str, str]
    precision: str
    tensorrt_compatible: bool
    input_names: tuple[str, ...]
    image_shape: tuple[int, int]     # (height, width) from the contract
    static_batch: int | None         # the ONNX's batch dimension if it is a fixed number


def read_onnx_info(onnx_path: str | os.PathLike) -> OnnxInfo:
    """Check the file is an admpff ONNX and return its metadata; one-line :class:`EngineBuildError` if not."""
    path = Path(onnx_path)
    if not path.is_file():
        raise EngineBuildError(f"ONNX file not found: {path}")
    try:
        import onnx
    except ImportError:
        raise EngineBuildError("admpff-build-engine reads the ONNX metadata with the onnx package: "
                               "pip install onnx") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineBuildError(f"{path.name} is not a readable ONNX model: {first}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    from admpff.runtime.contract import ModelInfo

    try:
        info = ModelInfo.from_metadata(meta, source=path.name)
    except ValueError as exc:
        raise EngineBuildError(str(exc)) from None
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    names = tuple(i.name for i in inputs)
    if set(names) != set(info.contract.input_names):
        raise EngineBuildError(f"{path.name} has inputs {list(names)}, but its contract says "
                               f"{list(info.contract.input_names)}")
    static_batch = None
    img = next(i for i in inputs if i.name == info.contract.input_names[0])
    dims = img.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value"):
        static_batch = int(dims[0].dim_value)
    return OnnxInfo(path=path, sha256=sha256_file(path),
                    metadata={k: v for k, v in meta.items() if k.startswith("admpff.")},
                    precision=info.precision, tensorrt_compatible=info.tensorrt_compatible,
                    input_names=tuple(info.contract.input_names),
                    image_shape=(info.contract.height, info.contract.width), static_batch=static_batch)


# ------------------------------------------------------------------------------------------------
# TensorRT (thin layer over the documented API)
# ------------------------------------------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise TensorRTUnavailable(TRT_MISSING_MESSAGE) from None
    return trt


def _flag_bits(enum, names: Sequence[str]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(enum, name))
    return bits


class _Ticker:
    """Prints 'still building ... N s' every ``every`` seconds while TensorRT builds."""

    def __init__(self, log: Callable[[str], None], every: float = 30.0):
        self.log, self.every = log, every
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.log(f"      still building ... {time.monotonic() - self._start:.0f} s")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=1.0)


def create_builder(trt, logger, device: int = 0):
    """``trt.Builder(logger)``, whose pybind11 binding raises TypeError (not None) when TensorRT's factory
    returns null: no usable CUDA device or driver, or no GPU memory left."""
    try:
        builder = trt.Builder(logger)
    except TypeError:
        builder = None
    if builder is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} could not create a builder on GPU {device}: no usable "
                               "CUDA device or driver, or no GPU memory left (see TensorRT's log above)")
    return builder


def load_timing_cache(config, path: Path, log: Callable[[str], None] = print) -> bool:
    """Attach the timing cache at ``path`` (or a fresh one) to ``config``; False when TensorRT takes none.

    ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache made by
    another GPU or TensorRT; then a fresh cache is used and replaces the file after the build.
    """
    blob = path.read_bytes() if path.is_file() else b""
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception:  # a damaged file: TensorRT's parser of the blob may raise
            cache = None
        if cache is not None and config.set_timing_cache(cache, False):
            log(f"      timing cache {path} (loaded)")
            return True
        log(f"      timing cache {path} was made by another GPU or TensorRT version (or is damaged): "
            f"building with a fresh one, which replaces it")
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        log("      warning: TensorRT took no fresh timing cache either; building without one")
        return False
    if not blob:
        log(f"      timing cache {path} (new)")
    return True


def save_timing_cache(config, path: Path, log: Callable[[str], None] = print) -> bool:
    """Write the builder's timing cache to ``path`` atomically; a failure is one warning line, never fatal."""
    try:
        cache = config.get_timing_cache()
        data = cache.serialize() if cache is not None else None
        if data is None:
            raise RuntimeError("TensorRT returned no timing cache")
        atomic_write_bytes(path, data)
    except Exception as exc:
        log(f"      warning: timing cache {path} not saved ({exc}); the engine is complete")
        return False
    return True


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike, plan: BuildPlan, *,
                 onnx_info: OnnxInfo | None = None, workspace_gb: float | None = DEFAULT_WORKSPACE_GB,
                 timing_cache: str | os.PathLike | None = None, device: int = 0, verbose: bool = False,
                 log: Callable[[str], None] = print) -> EngineSidecar:
    """Parse ``onnx_path``, build it as ``plan`` says, write the plan atomically plus ``<out>.json``."""
    trt = import_tensorrt()
    from admpff.runtime.tensorrt_backend import CudaRuntime  # cuda-python wrapper (lazy imports)

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    info = onnx_info or read_onnx_info(onnx_path)
    try:
        gpu = CudaRuntime(device).device_properties()
    except Exception as exc:
        raise EngineBuildError(f"cannot query GPU {device}: {exc}") from None
    t0 = time.monotonic()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = create_builder(trt, logger, device)
    network = builder.create_network(_flag_bits(trt.NetworkDefinitionCreationFlag, plan.network_flags))
    parser = trt.OnnxParser(network, logger)

    log(f"[1/3] parse {onnx_path.name} ({info.precision}, sha256 {info.sha256[:12]})")
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip().replace("\n", " ") for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: "
                               + " | ".join(errors[:3]) + more)
    net_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if net_inputs != set(info.input_names):
        raise EngineBuildError(f"parsed network has inputs {sorted(net_inputs)}, expected {list(info.input_names)}")

    config = builder.create_builder_config()
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.dla_core is not None:
        available = builder.num_DLA_cores
        if plan.dla_core >= available:
            raise EngineBuildError(f"--dla {plan.dla_core}: this device has {available} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    lo, opt, hi = plan.batch
    h, w = info.image_shape
    images, modality = info.input_names
    profile = builder.create_optimization_profile()
    profile.set_shape(images, (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))
    profile.set_shape(modality, (lo,), (opt,), (hi,))
    config.add_optimization_profile(profile)

    use_cache = False
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        use_cache = load_timing_cache(config, timing_cache, log)

    log(f"[2/3] build: {plan.describe()}")
    for warning in plan.warnings:
        log(f"      warning: {warning}")
    t_build = time.monotonic()
    with _Ticker(log):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} could not build the engine (see its log above)")
    build_s = time.monotonic() - t_build
    log(f"      built in {build_s:.1f} s")

    atomic_write_bytes(out_path, serialized)  # IHostMemory supports the buffer protocol
    from admpff.runtime.contract import package_version

    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__, gpu_name=gpu["name"], compute_capability=gpu["compute_capability"],
        precision=plan.precision, onnx_precision=plan.onnx_precision, batch=plan.batch,
        onnx_sha256=info.sha256, metadata=dict(info.metadata), onnx_path=str(onnx_path),
        requested_precision=plan.requested, strongly_typed=plan.strongly_typed,
        builder_flags=list(plan.builder_flags), dla_core=plan.dla_core, workspace_gb=workspace_gb,
        build_seconds=round(time.monotonic() - t0, 2),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        admpff_version=package_version())
    write_sidecar(out_path, sidecar)
    if use_cache:  # after the engine and its sidecar: a cache problem never costs the engine
        save_timing_cache(config, timing_cache, log)
    size_mb = out_path.stat().st_size / 1e6
    log(f"[3/3] wrote {out_path} ({size_mb:.1f} MB) and {sidecar_path(out_path).name} "
        f"for {gpu['name']} (sm {gpu['compute_capability']}) in {sidecar.build_seconds:.1f} s")
    return sidecar


def build_engine_from_onnx(onnx_path: str | os.PathLike, out_path: str | os.PathLike, *,
                           batch: str | Sequence[int] | None = None, precision: str = "auto",
                           dla: int | None = None, workspace_gb: float | None = DEFAULT_WORKSPACE_GB,
                           timing_cache: str | os.PathLike | None = None, device: int = 0,
                           verbose: bool = False, log: Callable[[str], None] = print) -> EngineSidecar:
    """What ``admpff-export --engine`` calls.  Raises :class:`EngineBuildError` (one-line message)."""
    # Everything that can be checked without TensorRT first, so a mistake shows up on any machine.
    info = read_onnx_info(onnx_path)
    profile = parse_batch(batch, dla)
    if info.precision == "int8-cpu" or not info.tensorrt_compatible:
        plan_build("11.0", info.precision, precision, dla, profile, onnx_name=str(onnx_path),
                   tensorrt_compatible=info.tensorrt_compatible)  # raises the "use <name>.int8.onnx" error
    if dla is not None and not (profile[0] == profile[1] == profile[2]):
        raise BuildPlanError(f"DLA needs a static batch (min = opt = max), got --batch "
                             f"{profile[0]},{profile[1]},{profile[2]}: pass e.g. --batch {profile[1]}")
    if info.static_batch is not None and profile != (info.static_batch,) * 3:
        raise BuildPlanError(f"{Path(onnx_path).name} has a fixed batch of {info.static_batch}: pass "
                             f"--batch {info.static_batch} (or export with a dynamic batch)")
    trt = import_tensorrt()
    if info.precision == "int8-qdq":
        chosen, why = choose_qdq_file(trt.__version__, onnx_path, info.metadata.get("admpff.float_dtype"), dla)
        if why:
            log(f"      {why}")
        if chosen != Path(onnx_path):
            onnx_path, info = chosen, read_onnx_info(chosen)
    plan = plan_build(trt.__version__, info.precision, precision, dla, profile,
                      onnx_name=str(onnx_path), tensorrt_compatible=info.tensorrt_compatible)
    return build_engine(onnx_path, out_path, plan, onnx_info=info, workspace_gb=workspace_gb,
                        timing_cache=timing_cache, device=device, verbose=verbose, log=log)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    from admpff.runtime.cli_support import make_parser as _make_parser

    p = _make_parser("admpff-build-engine",
                     description="Build a TensorRT engine from an admpff ONNX on the device that will run it, "
                                 "and write ENGINE.json next to it (what it was built for; the runtime checks it).")
    p.add_argument("onnx", help="the exported ONNX (model.onnx, model.fp16.onnx or model.int8.onnx)")
    p.add_argument("--out", required=True, help="engine file to write (e.g. model.engine)")
    p.add_argument("--batch", default=None,
                   help=f"MIN,OPT,MAX of the batch profile (default {','.join(map(str, DEFAULT_BATCH))}); "
                        "one number = static batch (needed for DLA; default there "
                        f"{DEFAULT_DLA_BATCH[0]})")
    p.add_argument("--workspace", type=float, default=DEFAULT_WORKSPACE_GB, metavar="GB",
                   help="builder workspace memory pool limit in GiB")
    p.add_argument("--dla", type=int, default=None, metavar="N", help="build for DLA core N (Jetson Orin/Xavier)")
    p.add_argument("--timing-cache", default=None, metavar="FILE",
                   help="load/save the builder timing cache here (speeds up rebuilds on the same device; "
                        "a cache from another GPU or TensorRT is replaced by a fresh one)")
    p.add_argument("--precision", default="auto", choices=REQUESTS,
                   help="auto = what the ONNX file is; fp16 on an FP32 file uses the FP16 flag (TensorRT 8.5-10)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--verbose", action="store_true", help="TensorRT verbose log")

    def one_line_error(message):  # usage mistakes: one line and the usage exit code, like every other error
        from admpff.runtime.cli_support import USAGE_ERROR
        p.exit(USAGE_ERROR, f"admpff-build-engine: error: {message} (see --help)\n")

    p.error = one_line_error
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from admpff.runtime.cli_support import USAGE_ERROR, CommandError, check_output_file

    args = make_parser().parse_args(argv)
    try:
        # Output paths first: a folder given as --out must not cost a parse and a multi-minute build.
        check_output_file(args.out, "--out")
        if args.timing_cache is not None:
            check_output_file(args.timing_cache, "--timing-cache")
        if args.workspace is not None and args.workspace <= 0:
            raise CommandError(f"--workspace {args.workspace:g}: give a positive size in GiB")
        if args.device < 0:
            raise CommandError(f"--device {args.device}: give a CUDA device index (0, 1, ...)")
        build_engine_from_onnx(args.onnx, args.out, batch=args.batch, precision=args.precision, dla=args.dla,
                               workspace_gb=args.workspace, timing_cache=args.timing_cache,
                               device=args.device, verbose=args.verbose)
    except TensorRTUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return USAGE_ERROR
    except (CommandError, EngineBuildError, OSError) as exc:
        print(f"admpff-build-engine: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("admpff-build-engine: interrupted (no engine written)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
