"""Decide per frame whether a camera is delivering a visible (colour) or an infrared (grey) image.

Day/night cameras switch to IR mode at dusk and deliver a monochrome image, often with a uniform
colour cast from the IR illuminator (purple or green).  So the measure is the *spread* of chroma around
its mean in CIE Lab on a small downsample: a uniform cast shifts a* and b* without spreading them,
while any real colour scene spreads them widely.  Measured on shared/data/vtest.avi (a fairly grey
courtyard): 17.9 for the colour frames, 0.0 for the same frames in grey, 0.9 for grey with a strong
purple cast; hence the threshold of 4.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["VISIBLE", "INFRARED", "CHROMA_THRESHOLD", "CROP_CHROMA_THRESHOLD", "chroma_spread", "frame_modality",
           "crop_modality", "folder_modality", "ModalitySwitch", "resolve_modality", "normalize_setting"]

VISIBLE = "visible"
INFRARED = "infrared"

#: chroma spread (Lab a*/b* units, 0..~180) below which a frame counts as infrared
CHROMA_THRESHOLD = 4.0
#: chroma spread below which a single person *crop* counts as infrared, for the last-resort guess only.
#: A crop is mostly one person's clothes: dull clothes on a grey courtyard spread little chroma.  Measured
#: on 102 HOG crops of shared/data/vtest.avi (a colour clip), saved as JPEG: 1.91 at the lowest, 24 of
#: them below the frame threshold of 4; the same crops in grey: 0.0.  A monochrome crop with a cast that
#: scales with brightness spreads 3-9, like colour, so no colour threshold can tell such crops apart:
#: a crop's modality should come from what knows it (folder layout, camera, the frame's decision).
CROP_CHROMA_THRESHOLD = 1.5
#: frames are reduced to at most this width before measuring (the measure is a global average)
_PROBE_WIDTH = 96

_ALIASES = {"visible": VISIBLE, "rgb": VISIBLE, "color": VISIBLE, "colour": VISIBLE, "vis": VISIBLE,
            "infrared": INFRARED, "ir": INFRARED, "thermal": INFRARED, "nir": INFRARED,
            "auto": "auto"}


def chroma_spread(frame_bgr: np.ndarray) -> float:
    """Mean distance of each pixel's (a*, b*) from the frame's mean (a*, b*), on a small downsample."""
    if frame_bgr.ndim == 2 or (frame_bgr.ndim == 3 and frame_bgr.shape[2] == 1):
        return 0.0  # a single-channel frame has no colour at all
    frame = frame_bgr[:, :, :3]
    h, w = frame.shape[:2]
    if w > _PROBE_WIDTH:
        small = cv2.resize(frame, (_PROBE_WIDTH, max(1, round(h * _PROBE_WIDTH / w))), interpolation=cv2.INTER_AREA)
    else:
        small = frame
    if small.dtype != np.uint8:
        small = np.clip(small, 0, 255).astype(np.uint8)
    lab = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_BGR2LAB).astype(np.float32)
    a, b = lab[..., 1], lab[..., 2]
    return float(np.hypot(a - a.mean(), b - b.mean()).mean())


def frame_modality(frame_bgr: np.ndarray, threshold: float = CHROMA_THRESHOLD) -> str:
    """``'visible'`` or ``'infrared'`` for one frame, from its chroma spread."""
    return INFRARED if chroma_spread(frame_bgr) < threshold else VISIBLE


def crop_modality(crop_bgr: np.ndarray, threshold: float = CROP_CHROMA_THRESHOLD) -> str:
    """A last-resort guess of one person crop's modality from its chroma spread (see
    ``CROP_CHROMA_THRESHOLD``): only a crop with (almost) no colour at all counts as infrared."""
    return INFRARED if chroma_spread(crop_bgr) < threshold else VISIBLE


def folder_modality(name: str) -> str | None:
    """The modality a folder's name states (``visible``, ``rgb``, ``infrared``, ``ir``, ``thermal``, ...),
    or None for any other name (``auto`` included: a folder says what its images are)."""
    mode = _ALIASES.get(str(name).strip().lower())
    return None if mode in (None, "auto") else mode


def normalize_setting(setting: str) -> str:
    """'visible' | 'infrared' | 'auto' from a user's spelling (also rgb, ir, thermal, ...)."""
    key = str(setting).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown modality setting {setting!r}; expected visible, infrared or auto")
    return _ALIASES[key]


class ModalitySwitch:
    """Per-camera modality with hysteresis: flips only after ``frames_to_switch`` consistent frames.

    A single odd frame (a car's headlights on an IR image, a colourless moment in daylight) must not
    flip the camera and with it the embeddings of every track on it.  The first frame seen decides
    the initial state unless ``initial`` is given.
    """

    def __init__(self, frames_to_switch: int = 5, threshold: float = CHROMA_THRESHOLD,
                 initial: str | None = None):
        if frames_to_switch < 1:
            raise ValueError("frames_to_switch must be >= 1")
        self.frames_to_switch = int(frames_to_switch)
        self.threshold = float(threshold)
        self.current: str | None = normalize_setting(initial) if initial else None
        if self.current == "auto":
            raise ValueError("initial must be visible or infrared")
        self._streak = 0
        self.switches = 0  # how many times the camera flipped (for logs / stats)
        self.last_chroma: float | None = None

    def observe(self, label: str) -> str:
        """Feed one per-frame decision; return the (possibly unchanged) camera modality."""
        label = normalize_setting(label)
        if self.current is None:
            self.current = label
        elif label == self.current:
            self._streak = 0
        else:
            self._streak += 1
            if self._streak >= self.frames_to_switch:
                self.current = label
                self._streak = 0
                self.switches += 1
        return self.current

    def update(self, frame_bgr: np.ndarray) -> str:
        """Measure a frame and feed the decision to :meth:`observe`."""
        self.last_chroma = chroma_spread(frame_bgr)
        return self.observe(INFRARED if self.last_chroma < self.threshold else VISIBLE)


def resolve_modality(setting: str, frame_bgr: np.ndarray | None = None,
                     switch: ModalitySwitch | None = None) -> str:
    """The modality to embed a frame's crops with.

    ``setting`` 'visible'/'infrared' is returned as is; 'auto' measures ``frame_bgr`` (through
    ``switch`` when given, so the camera keeps its hysteresis state).
    """
    mode = normalize_setting(setting)
    if mode != "auto":
        return mode
    if frame_bgr is None:
        raise ValueError("modality 'auto' needs the frame to decide from")
    return switch.update(frame_bgr) if switch is not None else frame_modality(frame_bgr)
