"""What a reusable INT8 artifact was made from, and one line saying why it cannot be reused.

Every cache the export keeps between runs (the calibration tensors ``<name>.calib.npz``, the activation
ranges ``<name>.int8.ranges.json`` / ``<name>.cpu-int8.ranges.json``) stores a *key*: a flat dict of
everything that produced it (model hash, calibration set identity, method, quantizer, opset, library
versions, ...).  A later export computes the key it would produce; the cache is reused only when the
two are equal, and otherwise recomputed with one line naming what changed.  A missing field in the
stored key counts as a change ("made by an older admpff"), so adding a field never reuses a stale file.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, Optional

#: Human names for key fields in the "what changed" line.
LABELS = {
    "format": "cache format",
    "model_sha256": "ONNX model",
    "checkpoint_sha256": "checkpoint",
    "calibration_sha256": "calibration crops",
    "calibration_count": "number of calibration crops",
    "sources": "calibration data (--calib-data)",
    "num_samples": "crops asked for (--calib-samples + --verify-samples)",
    "seed": "seed (--calib-seed)",
    "balance": "modality balancing",
    "contract": "model input size or preprocessing",
    "modality_rule": "modality labelling rule",
    "method": "calibration method (--calib-method)",
    "quantizer": "quantizer (--quantizer)",
    "quant_format": "quantization format",
    "opset": "opset (--opset)",
    "options": "quantizer options",
    "excluded_nodes": "float-kept nodes",
    "onnxruntime": "ONNX Runtime version",
    "onnx": "onnx version",
    "batch_size": "calibration batch size",
}

Note = Optional[Callable[[str], None]]


def key_digest(key: Mapping[str, Any]) -> str:
    """A stable sha256 of a key (sorted JSON)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a hash: its start is enough to tell two apart
    return text if len(text) <= 40 else text[:37] + "..."


def changed_fields(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """Readable differences between a stored key and the wanted one; empty when the cache is reusable."""
    if not stored:
        return ["it records no key (made by an older admpff)"]
    out = []
    for name in sorted(set(stored) | set(wanted)):
        old, new = stored.get(name, "<absent>"), wanted.get(name, "<absent>")
        # JSON turns tuples into lists: compare in the stored form.
        if json.dumps(old, sort_keys=True, default=str) == json.dumps(new, sort_keys=True, default=str):
            continue
        label = LABELS.get(name, name)
        if name in ("sources", "options", "contract", "excluded_nodes"):
            out.append(f"{label} changed")
        else:
            out.append(f"{label} {_short(old)} -> {_short(new)}")
    return out


def stale_reason(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str | None:
    """None when the cache matches, else e.g. ``"calibration method (--calib-method) entropy -> percentile"``."""
    changes = changed_fields(stored, wanted)
    return "; ".join(changes) if changes else None
