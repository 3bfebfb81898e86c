"""admpff.calibration: deterministic, modality-balanced INT8 calibration sets from crops, video or a training split.

Typical use::

    from admpff.calibration import load_or_build, CalibrationDataReader
    calset = load_or_build("calib.npz", ["crops/", "sysu:/data/SYSU-MM01"], num_samples=512)
    reader = CalibrationDataReader(calset, batch_size=8)   # for onnxruntime.quantization.quantize_static

The ONNX Runtime pieces (``CalibrationDataReader``, ``ort_calibrate_method``) are imported on first use so
that this package imports where onnxruntime is not installed.
"""
from .calibset import CalibrationSet, balanced_quotas, build_calibration_set, load_or_build
from .sources import (CalibrationError, CalibrationSource, CropRef, CropSample, DatasetTrainSource, FolderSource,
                      VideoSource, crop_chroma, infer_modality, parse_calib_spec)

_READER_NAMES = {"CalibrationDataReader", "CALIBRATION_METHODS", "normalize_calibration_method",
                 "ort_calibrate_method", "modelopt_calibration_method", "to_modelopt_calibration_data",
                 "save_modelopt_npz"}


def __getattr__(name):
    if name in _READER_NAMES:
        from . import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CalibrationError", "CalibrationSet", "CalibrationSource", "CropRef", "CropSample", "DatasetTrainSource",
           "FolderSource", "VideoSource", "balanced_quotas", "build_calibration_set", "crop_chroma",
           "infer_modality", "load_or_build", "parse_calib_spec", *sorted(_READER_NAMES)]
