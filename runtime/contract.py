"""The input/output contract of an ADMPFF embedding model: the one definition every stage reads.

Training builds its transforms from it, export writes it into the ONNX ``metadata_props`` and the
runtime reads it back from there, so a deployed model carries everything needed to preprocess crops
correctly.  This module imports only the standard library and numpy: the runtime runs without torch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import metadata as _metadata
from typing import Mapping

# Modality codes, fixed across the whole toolkit (training batches, the ONNX `modality` input,
# the runtime's per-camera setting, gallery records).
VISIBLE = 0
INFRARED = 1
MODALITY_CODES = {"visible": VISIBLE, "infrared": INFRARED}
MODALITY_NAMES = {code: name for name, code in MODALITY_CODES.items()}

# ImageNet statistics on the 0..1 scale (what torchvision's ResNet-50 was trained with).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Names of the exported graph's tensors.
INPUT_IMAGES = "images"
INPUT_MODALITY = "modality"
OUTPUT_EMBEDDING = "embedding"

METADATA_PREFIX = "admpff."
CONTRACT_KEY = "admpff.contract"


def package_version() -> str:
    try:
        return _metadata.version("admpff")
    except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


@dataclass(frozen=True)
class Stripe:
    """One part of the embedding: ``name`` occupies ``[offset, offset + size)``."""

    name: str
    offset: int
    size: int


def default_embedding_layout(dim: int = 512, p3: int = 3, p6: int = 6) -> tuple[Stripe, ...]:
    """Eq. (3) of the paper: P3 stripes (head, torso, legs), P6 stripes, then the LIE (EN) stripe."""
    names = [f"p3.{i}" for i in range(p3)] + [f"p6.{i}" for i in range(p6)] + ["en"]
    return tuple(Stripe(name, i * dim, dim) for i, name in enumerate(names))


@dataclass(frozen=True)
class InputContract:
    """What a model expects and what it returns.

    The exported ONNX takes ``images`` as float32 NCHW, RGB, values 0..255 at ``height x width`` and a
    per-sample int32 ``modality`` code; ImageNet normalisation happens inside the graph.  The PyTorch
    model takes the normalised tensor (``normalization_in_graph`` is False for it).
    """

    height: int = 288
    width: int = 144
    channel_order: str = "RGB"
    layout: str = "NCHW"
    value_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    normalization_in_graph: bool = True
    resize_interpolation: str = "linear"
    modality_codes: Mapping[str, int] = field(default_factory=lambda: dict(MODALITY_CODES))
    modality_dtype: str = "int32"
    embedding: tuple[Stripe, ...] = field(default_factory=default_embedding_layout)
    embedding_l2_normalized: bool = True
    input_names: tuple[str, str] = (INPUT_IMAGES, INPUT_MODALITY)
    output_name: str = OUTPUT_EMBEDDING

    @property
    def embedding_dim(self) -> int:
        return sum(s.size for s in self.embedding)

    @property
    def mean_255(self) -> tuple[float, ...]:
        """Mean on the 0..255 scale the graph input uses."""
        return tuple(m * 255.0 for m in self.mean)

    @property
    def std_255(self) -> tuple[float, ...]:
        return tuple(s * 255.0 for s in self.std)

    def modality_code(self, modality: str | int) -> int:
        """Accept a name ('visible', 'infrared', also 'ir', 'thermal') or a code; reject anything else."""
        if isinstance(modality, str):
            key = {"ir": "infrared", "thermal": "infrared", "rgb": "visible"}.get(modality.lower(), modality.lower())
            if key not in self.modality_codes:
                raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(self.modality_codes)}")
            return int(self.modality_codes[key])
        code = int(modality)
        if code not in self.modality_codes.values():
            raise ValueError(f"unknown modality code {modality!r}; expected one of {sorted(self.modality_codes.values())}")
        return code

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["embedding"] = [asdict(s) for s in self.embedding]
        d["modality_codes"] = dict(self.modality_codes)
        d["embedding_dim"] = self.embedding_dim
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "InputContract":
        d = dict(d)
        d.pop("embedding_dim", None)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"contract has unknown fields {sorted(unknown)} (made by a newer admpff?)")
        if "embedding" in d:
            d["embedding"] = tuple(Stripe(**s) for s in d["embedding"])
        for key in ("value_range", "mean", "std", "input_names"):
            if key in d:
                d[key] = tuple(d[key])
        contract = cls(**d)
        contract.validate()
        return contract

    def validate(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, not {self.channel_order!r}")
        if self.layout != "NCHW":
            raise ValueError(f"layout must be NCHW, not {self.layout!r}")
        offset = 0
        for s in self.embedding:
            if s.offset != offset or s.size <= 0:
                raise ValueError(f"embedding layout is not contiguous at stripe {s.name!r}")
            offset += s.size

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "InputContract":
        return cls.from_dict(json.loads(text))


DEFAULT_CONTRACT = InputContract()


def build_metadata(contract: InputContract, *, precision: str, checkpoint_sha256: str,
                   tensorrt_compatible: bool = True, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``metadata_props`` an exported ONNX carries (all values are strings, as ONNX requires)."""
    meta = {
        CONTRACT_KEY: contract.to_json(),
        "admpff.precision": precision,
        "admpff.checkpoint_sha256": checkpoint_sha256,
        "admpff.version": package_version(),
        "admpff.tensorrt_compatible": "true" if tensorrt_compatible else "false",
        "admpff.embedding_dim": str(contract.embedding_dim),
    }
    for key, value in (extra or {}).items():
        meta[key if key.startswith(METADATA_PREFIX) else METADATA_PREFIX + key] = str(value)
    return meta


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime knows about a model file: its contract plus provenance."""

    contract: InputContract
    precision: str
    checkpoint_sha256: str
    version: str
    tensorrt_compatible: bool
    raw: Mapping[str, str]

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "model") -> "ModelInfo":
        if CONTRACT_KEY not in meta:
            raise ValueError(f"{source} carries no admpff contract in its metadata "
                             "(was it exported with admpff-export?)")
        try:
            contract = InputContract.from_json(meta[CONTRACT_KEY])
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{source} has an unreadable admpff contract: {exc}") from None
        return cls(contract=contract,
                   precision=meta.get("admpff.precision", "unknown"),
                   checkpoint_sha256=meta.get("admpff.checkpoint_sha256", ""),
                   version=meta.get("admpff.version", "unknown"),
                   tensorrt_compatible=meta.get("admpff.tensorrt_compatible", "true") == "true",
                   raw=dict(meta))
