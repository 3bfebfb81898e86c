"""Triton ``config.pbtxt`` for an admpff model: one writer for the Python-backend server (``admpff-serve``)
and for the ``onnxruntime`` / ``tensorrt_plan`` repositories (``admpff-export --triton``).

Declared tensors follow the model's contract: ``images`` TYPE_FP32 ``[3, H, W]`` (the batch dimension is
implied by ``max_batch_size``), the per-sample ``modality`` TYPE_INT32 declared ``dims: [1]`` with
``reshape { shape: [] }`` (Triton needs rank >= 1 per sample; the model sees a ``[batch]`` tensor),
``embedding`` TYPE_FP32 ``[D]``.  The contract itself (the file's ``admpff.*`` metadata) travels in the
config's ``parameters``, which is where the client backend reads it from.

``validate_config_text`` parses a config with the ``ModelConfig`` protobuf schema that ``tritonclient``
ships; it needs tritonclient, writing does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .contract import InputContract

__all__ = ["TritonModelSpec", "model_config_text", "validate_config_text", "contract_parameters",
           "CONTRACT_PARAMETER_PREFIX"]

CONTRACT_PARAMETER_PREFIX = "admpff."


def contract_parameters(metadata: Mapping[str, str]) -> dict[str, str]:
    """The ``admpff.*`` metadata of a model file, as Triton config parameters (string values)."""
    return {k: str(v) for k, v in metadata.items() if k.startswith(CONTRACT_PARAMETER_PREFIX)}


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = (str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


@dataclass
class TritonModelSpec:
    """What goes into one ``config.pbtxt``."""

    name: str
    contract: InputContract
    max_batch_size: int = 32
    backend: str | None = None             # "python", "onnxruntime" (with platform unset)
    platform: str | None = None            # "tensorrt_plan", "onnxruntime_onnx"
    default_model_filename: str | None = None
    queue_delay_us: int = 2000             # dynamic batching: how long a request may wait for company
    dynamic_batching: bool = True          # False: one request per execution (to measure what batching gains)
    preferred_batch_sizes: Sequence[int] = ()
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"        # KIND_GPU for a tensorrt_plan
    parameters: Mapping[str, str] = field(default_factory=dict)
    extra: Sequence[str] = ()              # further top-level pbtxt blocks (already formatted)

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 (admpff models batch crops), not {self.max_batch_size}")
        if self.queue_delay_us < 0:
            raise ValueError(f"queue delay must be >= 0 microseconds, not {self.queue_delay_us}")
        if self.instance_count < 1:
            raise ValueError(f"instance count must be >= 1, not {self.instance_count}")
        if self.instance_kind not in ("KIND_CPU", "KIND_GPU", "KIND_AUTO"):
            raise ValueError(f"instance kind must be KIND_CPU, KIND_GPU or KIND_AUTO, not {self.instance_kind!r}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside 1..{self.max_batch_size}")
        if (self.backend is None) == (self.platform is None):
            raise ValueError("give exactly one of backend or platform")


def model_config_text(spec: TritonModelSpec) -> str:
    c = spec.contract
    lines = [f"name: {_quote(spec.name)}"]
    lines.append(f"backend: {_quote(spec.backend)}" if spec.backend else f"platform: {_quote(spec.platform)}")
    if spec.default_model_filename:
        lines.append(f"default_model_filename: {_quote(spec.default_model_filename)}")
    lines.append(f"max_batch_size: {spec.max_batch_size}")
    lines.append("input [")
    blocks = [f"  {{\n    name: {_quote(c.input_names[0])}\n    data_type: TYPE_FP32\n    format: FORMAT_NCHW\n"
              f"    dims: [ 3, {c.height}, {c.width} ]\n  }}"]
    if len(c.input_names) > 1:
        blocks.append(f"  {{\n    name: {_quote(c.input_names[1])}\n    data_type: TYPE_INT32\n    dims: [ 1 ]\n"
                      "    reshape: { shape: [ ] }\n  }")
    lines.append(",\n".join(blocks))
    lines.append("]")
    lines.append("output [")
    lines.append(f"  {{\n    name: {_quote(c.output_name)}\n    data_type: TYPE_FP32\n    dims: [ {c.embedding_dim} ]\n  }}")
    lines.append("]")
    preferred = (f"\n  preferred_batch_size: [ {', '.join(str(b) for b in spec.preferred_batch_sizes)} ]"
                 if spec.preferred_batch_sizes else "")
    if spec.dynamic_batching:
        lines.append(f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {spec.queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {spec.instance_count}\n    kind: {spec.instance_kind}\n  }}\n]")
    for key, value in spec.parameters.items():
        lines.append(f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}")
    lines.extend(spec.extra)
    return "\n".join(lines) + "\n"


def validate_config_text(text: str, source: str = "config.pbtxt") -> dict:
    """Parse with Triton's ``ModelConfig`` schema (from tritonclient) and return it as a dict.

    Raises ValueError with one line when the text does not parse or breaks a rule Triton enforces
    at load time that the schema alone cannot express (batch dimension, reshape of the modality).
    """
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise ImportError(f"validating a Triton config needs tritonclient[grpc] ({exc})") from None
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(f"{source} does not parse as a Triton ModelConfig: {exc}") from None
    as_dict = json_format.MessageToDict(config, preserving_proto_field_name=True)
    if config.max_batch_size > 0:
        for tensor in list(config.input) + list(config.output):
            if not tensor.dims:
                raise ValueError(f"{source}: tensor {tensor.name!r} has no dims (rank >= 1 is required)")
    return as_dict
