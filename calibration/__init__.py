"""admpff.calibration: deterministic, modality-balanced INT8 calibration sets from crops, video or a training split."""
