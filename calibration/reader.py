"""Hand a CalibrationSet to a quantizer: ONNX Runtime's data reader, NVIDIA Model Optimizer's arrays.

Calibration method names accepted by the toolkit: 'entropy', 'percentile', 'max' (alias 'minmax').
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from admpff.runtime.contract import INPUT_IMAGES, INPUT_MODALITY

from .calibset import CalibrationSet
from .sources import CalibrationError

try:  # ONNX Runtime is an extra; the rest of admpff.calibration works without it
    from onnxruntime.quantization import CalibrationDataReader as _OrtReaderBase
except ImportError:  # pragma: no cover - exercised only where onnxruntime is absent
    _OrtReaderBase = object

CALIBRATION_METHODS = ("entropy", "percentile", "max")
_METHOD_ALIASES = {"entropy": "entropy", "kl": "entropy", "percentile": "percentile",
                   "max": "max", "minmax": "max", "min-max": "max", "min_max": "max"}


def normalize_calibration_method(name) -> str:
    """'entropy' | 'percentile' | 'max' from a user's spelling (case-insensitive; 'minmax' -> 'max')."""
    key = str(getattr(name, "name", name)).strip().lower()
    if key not in _METHOD_ALIASES:
        raise CalibrationError(f"unknown calibration method {name!r}: use one of {', '.join(CALIBRATION_METHODS)} "
                               f"('minmax' is accepted for 'max')")
    return _METHOD_ALIASES[key]


def ort_calibrate_method(name):
    """Toolkit method name -> ``onnxruntime.quantization.CalibrationMethod`` member."""
    from onnxruntime.quantization import CalibrationMethod

    if isinstance(name, CalibrationMethod):
        return name
    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "max": CalibrationMethod.MinMax}[normalize_calibration_method(name)]


def modelopt_calibration_method(name) -> str:
    """Toolkit method name -> Model Optimizer's ``calibration_method`` ('entropy' or 'max')."""
    method = normalize_calibration_method(name)
    if method == "percentile":
        raise CalibrationError("NVIDIA Model Optimizer's INT8 calibration offers 'entropy' and 'max', not "
                               "'percentile'; use the ONNX Runtime quantizer for percentile calibration")
    return method


def _input_names(calset: CalibrationSet) -> tuple[str, str]:
    names = tuple(getattr(calset.contract, "input_names", (INPUT_IMAGES, INPUT_MODALITY)))
    return (names[0], names[1]) if len(names) >= 2 else (INPUT_IMAGES, INPUT_MODALITY)


class CalibrationDataReader(_OrtReaderBase):
    """Feeds a CalibrationSet to ``onnxruntime.quantization.quantize_static`` in batches.

    ``get_next()`` returns ``{'images': float32 [B,3,H,W], 'modality': int32 [B]}`` until the set is used
    up, then None; ``rewind()`` starts over (ORT calls it between calibration passes).  ``drop_last``
    omits a final short batch, for a model exported with a fixed batch size.
    """

    def __init__(self, calset: CalibrationSet, batch_size: int = 8, drop_last: bool = False):
        if batch_size < 1:
            raise CalibrationError(f"batch_size must be >= 1, not {batch_size}")
        if len(calset) == 0:
            raise CalibrationError("the calibration set is empty")
        if drop_last and len(calset) < batch_size:
            raise CalibrationError(f"{len(calset)} calibration samples do not fill one batch of {batch_size}")
        self.calset = calset
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.images_name, self.modality_name = _input_names(calset)
        self._begin, self._stop = 0, len(calset)
        self._start = 0

    def __len__(self) -> int:
        full, rest = divmod(self._stop - self._begin, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def get_next(self) -> "dict[str, np.ndarray] | None":
        start, stop = self._start, min(self._start + self.batch_size, self._stop)
        if start >= stop or (self.drop_last and stop - start < self.batch_size):
            return None
        self._start = stop
        return {self.images_name: np.ascontiguousarray(self.calset.images[start:stop], dtype=np.float32),
                self.modality_name: np.ascontiguousarray(self.calset.modality[start:stop], dtype=np.int32)}

    def rewind(self) -> None:
        self._start = self._begin

    def set_range(self, start_index: int, end_index: int) -> None:
        """ORT's strided-calibration hook (``CalibStridedMinMax``): read only samples [start, end) from now on."""
        self._stop = max(0, min(int(end_index), len(self.calset)))
        self._begin = self._start = max(0, min(int(start_index), self._stop))


def to_modelopt_calibration_data(calset: CalibrationSet) -> dict[str, np.ndarray]:
    """``{'images': float32 [N,3,H,W], 'modality': int32 [N]}`` for Model Optimizer's ``calibration_data``."""
    if len(calset) == 0:
        raise CalibrationError("the calibration set is empty")
    images_name, modality_name = _input_names(calset)
    return {images_name: np.ascontiguousarray(calset.images, dtype=np.float32),
            modality_name: np.ascontiguousarray(calset.modality, dtype=np.int32)}


def save_modelopt_npz(calset: CalibrationSet, path: "str | os.PathLike") -> Path:
    """The same arrays as an npz keyed by input name, for ``python -m modelopt.onnx.quantization
    --calibration_data_path``; written atomically."""
    from admpff.runtime.atomic import write_npz

    return write_npz(Path(path), to_modelopt_calibration_data(calset))  # umask permissions, like every artifact
