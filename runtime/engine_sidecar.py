"""The JSON sidecar next to a TensorRT engine (``model.engine`` -> ``model.engine.json``).

A serialized TensorRT plan is tied to the TensorRT version and the GPU it was built on, and it does not
carry the ONNX ``metadata_props``.  ``admpff-build-engine`` therefore writes this sidecar: what built the
engine (TensorRT version, GPU name, compute capability), how (precision, batch profile, DLA core) and
from what (the ONNX's sha256 and its admpff metadata, contract included).  The runtime needs only the
engine and its sidecar, and refuses an engine built for another TensorRT or GPU with a message that
names the difference and the exact command that rebuilds it.

Pure Python (standard library only): shared by the builder and the runtime, importable anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .atomic import write_bytes

SIDECAR_FORMAT = 1
SIDECAR_SUFFIX = ".json"

__all__ = ["EngineSidecar", "EngineMismatchError", "SidecarError", "sidecar_path", "read_sidecar",
           "write_sidecar", "check_compatible", "rebuild_command", "sha256_file", "atomic_write_bytes"]


class SidecarError(RuntimeError):
    """The sidecar is missing, unreadable or from an incompatible admpff."""


class EngineMismatchError(RuntimeError):
    """The engine was built for another TensorRT version, GPU or ONNX file."""


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to a temporary file in the target's folder, fsync, then ``os.replace`` it."""
    write_bytes(path, bytes(data))


@dataclass
class EngineSidecar:
    """Everything the runtime needs to know about an engine, and what it must match."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str          # "8.7" (Orin), "9.0" (H100) ...
    precision: str                   # engine precision: fp32 | fp16 | int8
    onnx_precision: str              # the ONNX's admpff.precision: fp32 | fp16 | int8-qdq
    batch: tuple[int, int, int]      # optimisation profile (min, opt, max) of the batch dimension
    onnx_sha256: str
    metadata: dict[str, str]         # the ONNX's admpff.* metadata_props (contract JSON included)
    onnx_path: str = ""              # as given to the builder: used in the rebuild command
    requested_precision: str = "auto"
    strongly_typed: bool = False
    builder_flags: list[str] = field(default_factory=list)
    dla_core: int | None = None
    workspace_gb: float | None = None
    build_seconds: float = 0.0
    built_at: str = ""               # ISO-8601 UTC
    admpff_version: str = ""
    format: int = SIDECAR_FORMAT

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch"] = list(self.batch)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "sidecar") -> "EngineSidecar":
        d = dict(d)
        fmt = d.get("format", SIDECAR_FORMAT)
        if not isinstance(fmt, int) or fmt > SIDECAR_FORMAT:
            raise SidecarError(f"{source} has format {fmt!r}; this admpff reads format <= {SIDECAR_FORMAT} "
                               "(upgrade admpff or rebuild the engine)")
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # ignore fields added by newer minor versions
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in d]
        if missing:
            raise SidecarError(f"{source} lacks {missing}")
        try:
            batch = tuple(int(b) for b in d["batch"])
            if len(batch) != 3:
                raise ValueError("batch must be [min, opt, max]")
            d["batch"] = batch
            d["metadata"] = {str(k): str(v) for k, v in dict(d["metadata"]).items()}
            if d.get("dla_core") is not None:
                d["dla_core"] = int(d["dla_core"])
            d["builder_flags"] = [str(x) for x in d.get("builder_flags", [])]
        except (TypeError, ValueError) as exc:
            raise SidecarError(f"{source} is malformed: {exc}") from None
        return cls(**d)

    @classmethod
    def from_json(cls, text: str, source: str = "sidecar") -> "EngineSidecar":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SidecarError(f"{source} is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise SidecarError(f"{source} is not a JSON object")
        return cls.from_dict(d, source)

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def max_batch(self) -> int:
        return self.batch[2]

    def model_info(self, source: str = "engine"):
        """The :class:`~admpff.runtime.contract.ModelInfo` carried over from the ONNX metadata."""
        from dataclasses import replace

        from .contract import ModelInfo  # numpy only; kept local so this module stays stdlib-only

        # precision is what the engine computes in (an FP32 ONNX built with the FP16 flag runs FP16).
        return replace(ModelInfo.from_metadata(self.metadata, source=source), precision=self.precision)


def read_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    engine_path = Path(engine_path)
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise SidecarError(f"{engine_path.name} has no sidecar {path.name}: engines built with "
                           "admpff-build-engine carry one (it holds the input contract and what the "
                           "engine was built for); rebuild the engine with admpff-build-engine")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SidecarError(f"cannot read {path.name}: {exc}") from None
    return EngineSidecar.from_json(text, source=path.name)


def write_sidecar(engine_path: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    path = sidecar_path(engine_path)
    atomic_write_bytes(path, (sidecar.to_json() + "\n").encode("utf-8"))
    return path


def rebuild_command(sidecar: EngineSidecar, engine_path: str | os.PathLike | None = None,
                    onnx_path: str | os.PathLike | None = None) -> str:
    """The ``admpff-build-engine`` command line that rebuilds this engine on the current device."""
    onnx = str(onnx_path or sidecar.onnx_path or "<model.onnx>")
    engine = str(engine_path or "<model.engine>")
    args = ["admpff-build-engine", onnx, "--out", engine, "--batch", ",".join(str(b) for b in sidecar.batch)]
    if sidecar.requested_precision and sidecar.requested_precision != "auto":
        args += ["--precision", sidecar.requested_precision]
    if sidecar.dla_core is not None:
        args += ["--dla", str(sidecar.dla_core)]
    if sidecar.workspace_gb:
        args += ["--workspace", f"{sidecar.workspace_gb:g}"]
    return " ".join(shlex.quote(a) for a in args)


def _release(version: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0): plans are tied to the TensorRT release (major.minor.patch)."""
    parts = []
    for token in str(version).strip().split(".")[:3]:
        digits = "".join(ch for ch in token if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _norm_gpu(name: str) -> str:
    return " ".join(str(name).split()).lower()


def check_compatible(sidecar: EngineSidecar, runtime_trt_version: str, gpu_name: str,
                     compute_capability: str | tuple[int, int], expected_onnx_sha: str | None = None,
                     *, engine_path: str | os.PathLike | None = None) -> None:
    """Raise :class:`EngineMismatchError` unless the engine was built for this TensorRT and GPU.

    TensorRT plans are specific to the TensorRT release and to the GPU model (same compute capability
    is not enough by default), so each difference is reported, followed by the rebuild command.
    """
    if isinstance(compute_capability, (tuple, list)):
        compute_capability = ".".join(str(int(x)) for x in compute_capability)
    problems = []
    if _release(sidecar.tensorrt_version) != _release(runtime_trt_version):
        problems.append(f"TensorRT {sidecar.tensorrt_version} built it, but this runtime has TensorRT "
                        f"{runtime_trt_version}")
    if str(sidecar.compute_capability) != str(compute_capability):
        problems.append(f"it was built for compute capability {sidecar.compute_capability} "
                        f"({sidecar.gpu_name}), but this GPU is {compute_capability} ({gpu_name})")
    elif _norm_gpu(sidecar.gpu_name) != _norm_gpu(gpu_name):
        problems.append(f"it was built on a {sidecar.gpu_name}, but this GPU is a {gpu_name}")
    if expected_onnx_sha and expected_onnx_sha != sidecar.onnx_sha256:
        problems.append(f"it was built from an ONNX with sha256 {sidecar.onnx_sha256[:12]}..., not the "
                        f"expected {expected_onnx_sha[:12]}...")
    if problems:
        name = Path(engine_path).name if engine_path else "the engine"
        raise EngineMismatchError(f"{name} does not match this device: " + "; ".join(problems)
                                  + f". Rebuild it here: {rebuild_command(sidecar, engine_path)}")
