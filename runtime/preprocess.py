"""Crop preprocessing: the one code path used by training caches, calibration and the runtime.

A crop is a BGR uint8 image as OpenCV reads it.  ``resize_crop`` turns it into the contract's
``height x width`` in the contract's channel order (uint8); ``crops_to_batch`` stacks such crops into
the float32 NCHW 0..255 tensor the exported graph takes (normalisation is inside the graph).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .contract import DEFAULT_CONTRACT, InputContract

_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


class EmptyCropError(ValueError):
    """A crop with no pixels (zero width or height)."""


def validate_crop(crop: np.ndarray, index: int | None = None) -> np.ndarray:
    where = "" if index is None else f" #{index}"
    if not isinstance(crop, np.ndarray):
        raise TypeError(f"crop{where} is {type(crop).__name__}, expected a numpy array")
    if crop.ndim == 2:  # single-channel (e.g. a raw thermal frame): replicate to 3 channels
        crop = np.repeat(crop[:, :, None], 3, axis=2)
    if crop.ndim != 3 or crop.shape[2] not in (3, 4):
        raise ValueError(f"crop{where} has shape {crop.shape}, expected HxWx3 BGR")
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise EmptyCropError(f"crop{where} is empty ({crop.shape[0]}x{crop.shape[1]} pixels)")
    if crop.shape[2] == 4:
        crop = crop[:, :, :3]
    if crop.dtype != np.uint8:
        crop = np.clip(crop, 0, 255).astype(np.uint8)
    return crop


def resize_crop(crop_bgr: np.ndarray, contract: InputContract = DEFAULT_CONTRACT) -> np.ndarray:
    """BGR crop of any size -> ``height x width x 3`` uint8 in the contract's channel order."""
    crop = validate_crop(crop_bgr)
    interp = _INTERPOLATION[contract.resize_interpolation]
    resized = cv2.resize(crop, (contract.width, contract.height), interpolation=interp)
    if contract.channel_order == "RGB":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return resized


def resized_to_batch(resized: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """``N x H x W x 3`` uint8 (already resized, channel order applied) -> float32 NCHW 0..255."""
    arr = np.asarray(resized)
    if arr.ndim == 3:
        arr = arr[None]
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32)


def crops_to_batch(crops_bgr: Sequence[np.ndarray], contract: InputContract = DEFAULT_CONTRACT) -> np.ndarray:
    """BGR crops -> the float32 NCHW 0..255 batch the exported model takes."""
    if len(crops_bgr) == 0:
        return np.zeros((0, 3, contract.height, contract.width), np.float32)
    out = np.empty((len(crops_bgr), 3, contract.height, contract.width), np.float32)
    for i, crop in enumerate(crops_bgr):
        try:
            out[i] = resize_crop(crop, contract).transpose(2, 0, 1)
        except (EmptyCropError, ValueError, TypeError) as exc:
            raise type(exc)(f"crop #{i}: {exc}") from None
    return out


def normalize_batch(batch: np.ndarray, contract: InputContract = DEFAULT_CONTRACT) -> np.ndarray:
    """float32 NCHW 0..255 -> ImageNet-normalised (what the PyTorch model takes)."""
    mean = np.asarray(contract.mean_255, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(contract.std_255, np.float32).reshape(1, 3, 1, 1)
    return (batch - mean) / std
