"""A generated cross-modal (visible / infrared) pedestrian data set, written in the official layouts.

SYSU-MM01 and RegDB are licence-gated, so the tests, the demo and CI run on pedestrians drawn here
with OpenCV on numpy arrays (no external assets).  The generator is built so that the *real* readers
and the *real* training/evaluation code can run on it unchanged:

* :func:`write_sysu` writes ``ROOT/cam1..cam6/<pid:04d>/<nnnn>.jpg`` and ``ROOT/exp/{train,val,test}_id.txt``;
* :func:`write_regdb` writes ``ROOT/{Visible,Thermal}/<id>/*.bmp`` and ``ROOT/idx/*_{1..10}.txt``;
* :func:`render_video` writes a short MJPG surveillance clip for the demo;
* :func:`main` is the ``admpff-make-data`` console command.

How an image is made
--------------------
An identity (:class:`Identity`, from :func:`make_identity`) is a set of persistent attributes: body
proportions, clothing colours, clothing *fabric thickness* and texture pattern, hair, carried object,
shoes.  Each image draws a pose (walk phase, view front/back/side, jitter) and rasterises the person
into a *material label map* (skin, hair, top, bottom, shoes, bag, strap, occluder) plus a pattern
mask.  The two modalities are then two different "shaders" of the same label map:

* visible: each material gets its RGB colour; background is a per-camera scene (wall/floor gradient,
  rectangles, noise), with per-camera colour cast, lighting gradient, blur, noise and a JPEG pass;
* near infrared (SYSU-MM01's cameras 3 and 6, which see by an 850 nm illuminator): each material gets
  its NIR reflectance.  Most dyes follow their red-weighted lightness there (NIR sits next to red),
  but a share of dyes is NIR-transparent and shows the bright fibre beneath whatever its colour
  (``NIR_BRIGHT_DYE_P``); skin is bright for every skin tone; hue is lost.  Illuminator fall-off,
  blur, automatic gain control, sensor noise and a JPEG pass, one grey channel replicated to three;
* thermal (RegDB's camera): each material gets an emitted temperature that never looks at its colour
  (skin and hair warm, clothing from fabric thickness, bags cool, print ink of the pattern a small
  offset), a cool, smooth background with warm blobs, thermal blur, glow and an edge-enhancement halo,
  automatic gain control, column fixed-pattern and sensor noise, one grey channel replicated to three.

So across modalities shape, proportions, carried objects, exposed skin and pattern structure carry
identity, plus, in NIR only, a partial and dye-dependent trace of lightness; colour itself never does.
The NIR cue is what makes the SYSU-layout set learnable from random weights on a CPU in minutes
(measured in ``tests/test_training.py``), while the thermal RegDB-layout set stays the harder one, as
the real RegDB is.  Everything is drawn from ``numpy.random.Generator`` seeded by
``(seed, stream, pid, modality, camera, index)``: generating a subset reproduces the same bytes.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from admpff.runtime.contract import INFRARED, VISIBLE

__all__ = [
    "Identity", "Pose", "CameraProfile", "DatasetSummary", "VideoSummary",
    "make_identity", "camera_profile", "generic_camera", "sample_pose", "render_image",
    "write_sysu", "write_regdb", "render_video", "main",
    "SYSU_RGB_CAMS", "SYSU_IR_CAMS", "TOP_FABRICS", "BOTTOM_FABRICS", "PATTERNS", "CARRY",
]

# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------

SYSU_RGB_CAMS = (1, 2, 4, 5)
SYSU_IR_CAMS = (3, 6)
DEFAULT_SIZE = (128, 64)  # (height, width): RegDB's native crop size, and cheap

# Material labels of the rasterised person.
BG, SKIN, HAIR, TOP, BOTTOM, SHOE, BAG, STRAP, OCCLUDER = range(9)
_N_LABELS = 9

# Seed streams: each kind of random draw gets its own stream, so adding draws to one never shifts
# another (identities stay the same when the image model changes, subsets stay byte-identical).
_S_IDENTITY, _S_IMAGE, _S_CAMERA, _S_SPLIT, _S_PRESENCE, _S_TRIAL, _S_VIDEO, _S_NIR = range(1, 9)

#: share of dyes that are transparent in near infrared (the fabric then looks bright whatever its colour)
NIR_BRIGHT_DYE_P = 0.1
#: weights of R, G, B in the lightness that NIR reflectance follows for the other dyes
_NIR_LIGHTNESS = (0.6, 0.3, 0.1)
_LUMA = (0.299, 0.587, 0.114)

# Fabric name -> thickness range.  Thickness (not colour) sets the apparent temperature in IR.
TOP_FABRICS = {
    "tshirt": (0.05, 0.2), "shirt": (0.15, 0.3), "sweater": (0.4, 0.6),
    "hoodie": (0.5, 0.65), "jacket": (0.65, 0.8), "down_coat": (0.85, 1.0),
}
BOTTOM_FABRICS = {
    "linen": (0.05, 0.2), "cotton": (0.2, 0.35), "denim": (0.4, 0.55), "wool": (0.55, 0.7),
    "padded": (0.8, 0.95),
}
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo")
CARRY = ("none", "bag_left", "bag_right", "backpack")
HAIR_STYLES = ("short", "long", "ponytail", "buzz")
BOTTOM_STYLES = ("trousers", "shorts", "skirt")
VIEWS = ("front", "back", "side")

# Clothing colours (RGB) with weights: dark clothes dominate, as in real crowds, so colours collide.
_CLOTH_COLOURS = np.array([
    (25, 25, 28), (55, 55, 60), (120, 120, 124), (228, 228, 222), (30, 38, 85), (50, 90, 170),
    (140, 180, 220), (170, 32, 36), (100, 28, 36), (40, 105, 60), (100, 100, 52), (180, 160, 112),
    (210, 192, 160), (108, 70, 42), (228, 150, 170), (228, 198, 52), (228, 120, 42), (98, 60, 128),
    (32, 118, 128),
], np.float32)
_CLOTH_WEIGHTS = np.array([6, 4, 3, 3, 4, 3, 2, 2, 1, 2, 1, 2, 2, 2, 1, 1, 1, 1, 1], np.float64)
_CLOTH_WEIGHTS /= _CLOTH_WEIGHTS.sum()
_SKIN_TONES = np.array([(240, 200, 170), (225, 180, 145), (200, 150, 110), (160, 110, 75),
                        (110, 75, 50)], np.float32)
_HAIR_COLOURS = np.array([(20, 16, 14), (45, 30, 20), (90, 60, 35), (200, 170, 110),
                          (150, 150, 150), (120, 40, 30)], np.float32)
_HAIR_WEIGHTS = np.array([6, 4, 2, 1, 1, 0.5]) / 14.5


def _rng(*key: int) -> np.random.Generator:
    """A generator for one stream of draws; ``key`` is a tuple of non-negative ints."""
    return np.random.default_rng([int(k) for k in key])


# ----------------------------------------------------------------------------------------------
# Identities, poses and cameras
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """The persistent attributes of one person.  Proportions are fractions of body height."""

    pid: int
    female: bool
    slim: float              # >1: slimmer/taller-looking in a height-normalised crop
    head: float              # head radius
    shoulder: float          # shoulder width
    hip: float               # hip width
    leg: float               # hip-to-sole length
    limb: float              # limb thickness factor
    skin_rgb: tuple
    hair_rgb: tuple
    hair_style: str
    top_rgb: tuple
    top_fabric: str
    top_thickness: float     # 0 thin .. 1 thick; IR brightness of the top derives from this
    sleeves: str             # "short" | "long"
    pattern: str             # one of PATTERNS
    pattern_rgb: tuple
    pattern_period: float    # stripe/check period
    pattern_ir: float        # signed IR offset of the print (ink emissivity), weaker than in colour
    bottom_style: str
    bottom_rgb: tuple
    bottom_fabric: str
    bottom_thickness: float
    shoe_rgb: tuple
    carry: str               # one of CARRY
    bag_rgb: tuple
    bag_size: float
    bag_temp: float          # bags are cooler than the body
    # Near-infrared reflectance (0..1) of the dyed materials (see _nir_reflectance); defaults for hand-made ones.
    nir_top: float = 0.5
    nir_bottom: float = 0.5
    nir_print: float = 0.5
    nir_bag: float = 0.5
    nir_shoe: float = 0.3


def make_identity(pid: int, seed: int = 0) -> Identity:
    """The identity ``pid`` of the data set generated with ``seed`` (same inputs, same identity)."""
    r = _rng(seed, _S_IDENTITY, pid)
    female = bool(r.random() < 0.45)

    def colour(avoid=None):
        for _ in range(4):
            c = _CLOTH_COLOURS[r.choice(len(_CLOTH_COLOURS), p=_CLOTH_WEIGHTS)]
            if avoid is None or np.abs(c - np.asarray(avoid)).sum() > 120:
                break
        return tuple(float(v) for v in np.clip(c * r.uniform(0.85, 1.12, 3), 0, 255))

    top_fabric = str(r.choice(list(TOP_FABRICS)))
    top_thickness = float(r.uniform(*TOP_FABRICS[top_fabric]))
    bottom_style = str(r.choice(BOTTOM_STYLES, p=[0.72, 0.14, 0.14] if female else [0.85, 0.15, 0.0]))
    if bottom_style == "trousers":
        bottom_fabric = str(r.choice(list(BOTTOM_FABRICS)))
    else:  # shorts and skirts are thin: they are summer clothes
        bottom_fabric = str(r.choice(["linen", "cotton"]))
    bottom_thickness = float(r.uniform(*BOTTOM_FABRICS[bottom_fabric]))
    sleeves = "long" if top_thickness > 0.4 else str(r.choice(["short", "long"], p=[0.7, 0.3]))
    top_rgb = colour()
    pattern = str(r.choice(PATTERNS, p=[0.4, 0.18, 0.12, 0.12, 0.18]))
    hair_style = str(r.choice(HAIR_STYLES, p=[0.3, 0.45, 0.25, 0.0] if female else [0.75, 0.05, 0.02, 0.18]))
    ident = Identity(
        pid=int(pid),
        female=female,
        slim=float(r.uniform(0.88, 1.14)),
        head=float(r.uniform(0.058, 0.074)),
        shoulder=float(r.uniform(0.2, 0.25) if female else r.uniform(0.23, 0.29)),
        hip=float(r.uniform(0.17, 0.22) if female else r.uniform(0.15, 0.19)),
        leg=float(r.uniform(0.44, 0.52)),
        limb=float(r.uniform(0.85, 1.2)),
        skin_rgb=tuple(float(v) for v in _SKIN_TONES[r.integers(len(_SKIN_TONES))] * r.uniform(0.95, 1.05)),
        hair_rgb=tuple(float(v) for v in _HAIR_COLOURS[r.choice(len(_HAIR_COLOURS), p=_HAIR_WEIGHTS)]),
        hair_style=hair_style,
        top_rgb=top_rgb,
        top_fabric=top_fabric,
        top_thickness=top_thickness,
        sleeves=sleeves,
        pattern=pattern,
        pattern_rgb=colour(avoid=top_rgb),
        pattern_period=float(r.uniform(0.028, 0.055)),
        pattern_ir=float(r.choice([-1.0, 1.0]) * r.uniform(0.05, 0.12)),
        bottom_style=bottom_style,
        bottom_rgb=colour(),
        bottom_fabric=bottom_fabric,
        bottom_thickness=bottom_thickness,
        shoe_rgb=tuple(float(v) for v in (r.choice([30.0, 60.0, 225.0, 140.0], p=[0.45, 0.2, 0.25, 0.1])
                                           * r.uniform(0.9, 1.1, 3))),
        carry=str(r.choice(CARRY, p=[0.4, 0.17, 0.17, 0.26])),
        bag_rgb=colour(),
        bag_size=float(r.uniform(0.8, 1.25)),
        bag_temp=float(r.uniform(0.18, 0.32)),
    )
    # NIR reflectances from their own stream: the identities above stay what they were.
    nir = _rng(seed, _S_NIR, pid)
    return replace(ident, nir_top=_nir_reflectance(ident.top_rgb, nir), nir_bottom=_nir_reflectance(ident.bottom_rgb, nir),
                   nir_print=_nir_reflectance(ident.pattern_rgb, nir), nir_bag=_nir_reflectance(ident.bag_rgb, nir),
                   nir_shoe=_nir_reflectance(ident.shoe_rgb, nir))


def _nir_reflectance(rgb, r: np.random.Generator) -> float:
    """NIR reflectance of a dyed material of colour ``rgb``: its red-weighted lightness, or, for an
    NIR-transparent dye (probability ``NIR_BRIGHT_DYE_P``), the bright fibre beneath.  Three draws always."""
    transparent, fibre, spread = r.random(), r.uniform(0.55, 0.9), r.normal(0.0, 0.06)
    if transparent < NIR_BRIGHT_DYE_P:
        return float(fibre)
    lightness = float(np.dot(rgb, _NIR_LIGHTNESS)) / 255.0
    return float(np.clip(0.1 + 0.8 * lightness + spread, 0.03, 0.95))


@dataclass(frozen=True)
class Pose:
    """Per-image pose.  ``mirror`` flips side views (walking left instead of right)."""

    view: str = "front"
    mirror: bool = False
    phase: float = 0.0       # walk cycle phase, radians
    stride: float = 0.35     # leg swing amplitude, radians
    arm_swing: float = 0.3   # arm swing amplitude, radians


def sample_pose(rng: np.random.Generator) -> Pose:
    """A random walking pose (always the same number of draws, whatever the outcome)."""
    u = rng.random(5)
    view = VIEWS[int(np.searchsorted([0.38, 0.76], u[0], side="right"))]
    return Pose(view=view, mirror=bool(u[1] < 0.5), phase=float(u[2] * 2 * np.pi),
                stride=float(0.18 + 0.32 * u[3]), arm_swing=float(0.12 + 0.35 * u[4]))


@dataclass(frozen=True)
class CameraProfile:
    """How one camera sees the world: modality, scene, colour cast and image quality."""

    cam_id: int
    modality: int
    outdoor: bool
    cast: tuple = (1.0, 1.0, 1.0)    # per-channel RGB gain (visible)
    brightness: float = 1.0
    blur: float = 1.0                # optics blur sigma, output pixels
    noise: float = 3.0               # sensor noise sigma, grey levels
    scene_seed: int = 0              # seeds the persistent background scene of this camera
    infrared: str = "thermal"        # what an infrared camera senses: "nir" (reflected 850 nm) or "thermal"


# SYSU: cam1/cam2 indoor RGB, cam3 indoor IR, cam4/cam5 outdoor RGB, cam6 outdoor IR.
_SYSU_CAMS = {
    1: dict(modality=VISIBLE, outdoor=False, cast=(1.08, 1.0, 0.86), brightness=1.05, blur=0.7, noise=2.5),
    2: dict(modality=VISIBLE, outdoor=False, cast=(0.92, 1.06, 0.95), brightness=0.82, blur=1.0, noise=4.0),
    3: dict(modality=INFRARED, outdoor=False, blur=0.9, noise=3.0, infrared="nir"),
    4: dict(modality=VISIBLE, outdoor=True, cast=(0.95, 1.0, 1.1), brightness=1.15, blur=0.6, noise=2.0),
    5: dict(modality=VISIBLE, outdoor=True, cast=(1.0, 0.98, 1.02), brightness=0.92, blur=1.1, noise=3.0),
    6: dict(modality=INFRARED, outdoor=True, blur=1.1, noise=4.5, infrared="nir"),
}


def camera_profile(cam_id: int) -> CameraProfile:
    """The profile of SYSU-MM01 camera ``cam_id`` (1..6): RGB 1, 2 (indoor), 4, 5 (outdoor); near-IR 3, 6."""
    base = _SYSU_CAMS.get(int(cam_id))
    if base is None:
        raise ValueError(f"SYSU cameras are 1..6, not {cam_id!r}")
    return CameraProfile(cam_id=int(cam_id), scene_seed=int(cam_id), **base)


def generic_camera(modality: int, seed: int = 0) -> CameraProfile:
    """A non-SYSU camera of ``modality`` (RegDB's pair): id 1 visible, id 2 thermal, drawn from ``seed``."""
    cam_id = 1 if modality == VISIBLE else 2
    r = _rng(seed, _S_CAMERA, 100 + cam_id)
    return CameraProfile(cam_id=cam_id, modality=modality, outdoor=bool(r.random() < 0.5),
                         cast=tuple(float(v) for v in r.uniform(0.92, 1.08, 3)),
                         brightness=float(r.uniform(0.85, 1.1)), blur=float(r.uniform(0.6, 1.0)),
                         noise=float(r.uniform(2.0, 4.0)), scene_seed=100 + cam_id)


# ----------------------------------------------------------------------------------------------
# Rasterising a person into material layers
# ----------------------------------------------------------------------------------------------

_SHIFT = 4          # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


class _Layers:
    """Label map + far-side flag map, drawn with the same primitives."""

    def __init__(self, h: int, w: int):
        self.label = np.zeros((h, w), np.uint8)
        self.far = np.zeros((h, w), np.uint8)   # 1 where a far-side limb shows (shaded darker)
        self.pattern: np.ndarray | None = None

    def limb(self, p0, p1, width: float, mat: int, far: bool = False) -> None:
        t = max(1, int(round(width)))
        for img, v in ((self.label, mat), (self.far, int(far))):
            cv2.line(img, _pt(*p0), _pt(*p1), v, t, cv2.LINE_8, _SHIFT)

    def poly(self, pts, mat: int, far: bool = False) -> None:
        arr = np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32)
        for img, v in ((self.label, mat), (self.far, int(far))):
            cv2.fillPoly(img, [arr], v, cv2.LINE_8, _SHIFT)

    def ellipse(self, c, axes, mat: int, far: bool = False, angle: float = 0.0) -> None:
        ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
        for img, v in ((self.label, mat), (self.far, int(far))):
            cv2.ellipse(img, _pt(*c), ax, angle, 0, 360, v, -1, cv2.LINE_8, _SHIFT)

    def rect(self, x0, y0, x1, y1, mat: int, far: bool = False) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], mat, far)


def _draw_person(L: _Layers, ident: Identity, pose: Pose, cx: float, y_feet: float, ph: float) -> dict:
    """Draw ``ident`` standing on ``y_feet`` with body axis ``cx`` and height ``ph`` (pixels).

    Side views are drawn facing +x; the caller mirrors.  Returns anchor points for the pattern.
    """
    w_scale = 1.0 / ident.slim
    hr = ident.head * ph
    y_top = y_feet - ph
    head_c = (cx, y_top + hr)
    sh_y = y_top + 2.0 * hr + 0.025 * ph
    hip_y = y_feet - ident.leg * ph
    sw = 0.5 * ident.shoulder * ph * w_scale
    hw = 0.5 * ident.hip * ph * w_scale
    arm_w = 0.05 * ph * ident.limb * w_scale
    leg_w = 0.068 * ph * ident.limb * w_scale
    upper_arm, fore_arm = 0.18 * ph, 0.16 * ph
    leg_len = y_feet - hip_y - 0.015 * ph
    thigh, shin = 0.5 * leg_len, 0.5 * leg_len
    top_len = 0.06 if ident.top_thickness > 0.65 else 0.02   # jackets hang lower over the hips
    torso_bottom = hip_y + top_len * ph
    side = pose.view == "side"
    s = math.sin(pose.phase)

    def arm(shoulder, angle, bend, far):
        elbow = (shoulder[0] + upper_arm * math.sin(angle), shoulder[1] + upper_arm * math.cos(angle))
        a2 = angle + bend
        hand = (elbow[0] + fore_arm * math.sin(a2), elbow[1] + fore_arm * math.cos(a2))
        if ident.sleeves == "long":
            L.limb(shoulder, elbow, arm_w, TOP, far)
            L.limb(elbow, hand, arm_w * 0.9, TOP, far)
        else:
            L.limb(shoulder, elbow, arm_w * 0.85, SKIN, far)
            L.limb(elbow, hand, arm_w * 0.8, SKIN, far)
            cuff = (shoulder[0] + 0.5 * (elbow[0] - shoulder[0]), shoulder[1] + 0.5 * (elbow[1] - shoulder[1]))
            L.limb(shoulder, cuff, arm_w * 1.05, TOP, far)
        L.ellipse(hand, (arm_w * 0.5, arm_w * 0.6), SKIN, far)
        return hand

    def leg(hip, knee, foot, far, forward):
        trousers = ident.bottom_style == "trousers"
        mat = BOTTOM if trousers else SKIN
        width = leg_w if trousers else leg_w * 0.82
        L.limb(hip, knee, width, mat, far)
        L.limb(knee, foot, width * 0.85, mat, far)
        if ident.bottom_style == "shorts":
            mid = (hip[0] + 0.6 * (knee[0] - hip[0]), hip[1] + 0.6 * (knee[1] - hip[1]))
            L.limb(hip, mid, leg_w * 1.05, BOTTOM, far)
        toe = 0.45 * leg_w * forward
        L.ellipse((foot[0] + toe, foot[1] + 0.15 * leg_w),
                  (leg_w * (0.85 if side else 0.5), leg_w * 0.36), SHOE, far)

    def bag_box(x_side):
        """Cross-body bag at the hip on side x_side (-1/+1 in image x); strap to the other shoulder."""
        bw, bh = 0.11 * ph * ident.bag_size, 0.09 * ph * ident.bag_size
        bx = cx + x_side * (hw + 0.35 * bw)
        by = hip_y - 0.01 * ph
        L.limb((cx - x_side * sw * 0.6, sh_y), (bx, by - bh * 0.5), arm_w * 0.35, STRAP)
        L.poly([(bx - bw / 2, by - bh / 2), (bx + bw / 2, by - bh / 2), (bx + bw / 2 * 1.05, by + bh / 2),
                (bx - bw / 2 * 1.05, by + bh / 2)], BAG)

    def skirt(half_top, half_bottom):
        L.poly([(cx - half_top, hip_y - 0.03 * ph), (cx + half_top, hip_y - 0.03 * ph),
                (cx + half_bottom, hip_y + 0.24 * ph), (cx - half_bottom, hip_y + 0.24 * ph)], BOTTOM)

    def hair_and_head(view):
        hx, hy = head_c
        if ident.hair_style == "long" and view == "side":
            L.rect(hx - hr * 1.3, hy, hx + hr * 0.3, sh_y + 0.07 * ph, HAIR)
        elif ident.hair_style == "long" and view == "front":   # two strands framing the face
            for sign in (-1.0, 1.0):
                L.limb((hx + sign * hr * 0.7, hy), (hx + sign * hr * 0.85, sh_y + 0.06 * ph), hr * 0.5, HAIR)
        if ident.hair_style == "ponytail" and view == "side":
            L.limb((hx - hr * 0.8, hy - 0.2 * hr), (hx - hr * 1.2, hy + 1.3 * hr), hr * 0.5, HAIR)
        L.limb((hx, hy), (hx, sh_y + 0.01 * ph), hr * 0.8, SKIN)                  # neck
        L.ellipse((hx, hy), (hr * 0.84, hr), SKIN)
        cover = 0.45 if ident.hair_style == "buzz" else 0.75
        if view == "back":
            L.ellipse((hx, hy - 0.05 * hr), (hr * 0.9, hr * 1.02), HAIR)
            if ident.hair_style == "long":
                L.poly([(hx - hr * 0.95, hy), (hx + hr * 0.95, hy), (hx + hr * 1.05, sh_y + 0.09 * ph),
                        (hx - hr * 1.05, sh_y + 0.09 * ph)], HAIR)
            elif ident.hair_style == "ponytail":
                L.limb((hx, hy + 0.6 * hr), (hx, hy + 1.6 * hr), hr * 0.45, HAIR)
        elif view == "side":
            L.ellipse((hx - 0.25 * hr, hy - 0.25 * hr), (hr * 0.8, hr * cover), HAIR)
        else:  # front: a cap of hair, then the face below it
            L.ellipse((hx, hy - 0.12 * hr), (hr * 0.92, hr * 0.95), HAIR)
            L.ellipse((hx, hy + (0.95 - cover) * hr), (hr * 0.74, hr * (0.2 + cover)), SKIN)

    if not side:
        front = pose.view == "front"
        # Legs: a small lift of the swinging foot gives the walking impression in frontal views.
        for k, sign in enumerate((-1.0, 1.0)):
            hip = (cx + sign * hw * 0.48, hip_y)
            lift = max(0.0, s if k == 0 else -s) * pose.stride * 0.35 * leg_len
            foot = (cx + sign * (hw * 0.55 + 0.01 * ph), y_feet - lift - 0.01 * ph)
            knee = ((hip[0] + foot[0]) / 2 + sign * 0.01 * ph, hip_y + thigh - lift * 0.4)
            leg(hip, knee, foot, False, 0.0)
        if ident.bottom_style == "skirt":
            skirt(hw * 1.0, hw * 1.45)
        else:
            L.poly([(cx - hw, hip_y - 0.03 * ph), (cx + hw, hip_y - 0.03 * ph), (cx + hw * 0.9, hip_y + 0.07 * ph),
                    (cx - hw * 0.9, hip_y + 0.07 * ph)], BOTTOM)
        # Person's left is image +x seen from the front, image -x seen from the back.
        left = 1.0 if front else -1.0
        if ident.carry in ("bag_left", "bag_right") and not front:
            bag_box(left if ident.carry == "bag_left" else -left)
        L.poly([(cx - sw, sh_y + 0.025 * ph), (cx - sw * 0.78, sh_y - 0.004 * ph), (cx + sw * 0.78, sh_y - 0.004 * ph),
                (cx + sw, sh_y + 0.025 * ph), (cx + hw * 1.04, torso_bottom), (cx - hw * 1.04, torso_bottom)], TOP)
        for k, sign in enumerate((-1.0, 1.0)):
            shoulder = (cx + sign * (sw - arm_w * 0.45), sh_y + arm_w * 0.5)
            swing = pose.arm_swing * (s if k == 0 else -s)
            arm(shoulder, sign * (0.09 + 0.05 * abs(swing)), sign * 0.05 * (1 + swing), False)
        if ident.carry == "backpack":
            if front:
                for sign in (-1.0, 1.0):
                    L.limb((cx + sign * sw * 0.55, sh_y), (cx + sign * sw * 0.62, sh_y + 0.2 * ph), arm_w * 0.45, STRAP)
            else:
                bw, bh = sw * 1.45 * ident.bag_size ** 0.5, 0.26 * ph * ident.bag_size
                L.ellipse((cx, sh_y + 0.03 * ph + bh / 2), (bw / 2, bh / 2), BAG)
                L.rect(cx - bw / 2, sh_y + 0.03 * ph + bh * 0.3, cx + bw / 2, sh_y + 0.03 * ph + bh, BAG)
        if ident.carry in ("bag_left", "bag_right") and front:
            bag_box(left if ident.carry == "bag_left" else -left)
        hair_and_head(pose.view)
    else:
        # Facing +x.  The near side is the person's left unless mirrored (mirroring flips handedness).
        near_is_left = not pose.mirror
        sd, hd = sw * 0.58, hw * 0.72
        hip = (cx, hip_y)
        shoulder = (cx - 0.1 * sd, sh_y + arm_w * 0.5)
        legs = []
        for sign in (1.0, -1.0):                         # near leg phase +, far leg phase -
            th = sign * pose.stride * s
            bend = max(0.0, -sign * math.sin(pose.phase + 0.7)) * 0.7
            knee = (hip[0] + thigh * math.sin(th), hip[1] + thigh * math.cos(th))
            foot = (knee[0] + shin * math.sin(th - bend), knee[1] + shin * math.cos(th - bend))
            legs.append((knee, foot))
        has_side_bag = ident.carry in ("bag_left", "bag_right")
        bag_near = has_side_bag and ((ident.carry == "bag_left") == near_is_left)
        # Far side first: arm, leg, and a bag hanging on the far hip.
        arm(shoulder, pose.arm_swing * s, 0.35, True)
        leg(hip, legs[1][0], legs[1][1], True, 1.0)
        if has_side_bag and not bag_near:
            bw, bh = 0.1 * ph * ident.bag_size, 0.09 * ph * ident.bag_size
            L.rect(cx - bw * 0.2, hip_y - bh * 0.6, cx + bw * 0.6, hip_y + bh * 0.4, BAG, True)
        if ident.carry == "backpack":
            depth, bh = 0.075 * ph * ident.bag_size, 0.26 * ph * ident.bag_size
            L.ellipse((cx - sd - depth * 0.35, sh_y + 0.03 * ph + bh / 2), (depth, bh / 2), BAG)
        leg(hip, legs[0][0], legs[0][1], False, 1.0)
        if ident.bottom_style == "skirt":
            skirt(hd * 1.05, hd * 1.5)
        else:
            L.ellipse((cx, hip_y + 0.01 * ph), (hd * 1.05, 0.05 * ph), BOTTOM)
        L.poly([(cx - sd, sh_y + 0.02 * ph), (cx - sd * 0.6, sh_y - 0.004 * ph), (cx + sd * 0.7, sh_y - 0.004 * ph),
                (cx + sd, sh_y + 0.04 * ph), (cx + hd * 1.05, torso_bottom), (cx - hd * 1.05, torso_bottom)], TOP)
        if ident.carry == "backpack":
            L.limb((cx - sd * 0.2, sh_y), (cx - sd * 0.4, sh_y + 0.2 * ph), arm_w * 0.45, STRAP)
        if bag_near:
            bw, bh = 0.11 * ph * ident.bag_size, 0.09 * ph * ident.bag_size
            L.limb((cx, sh_y), (cx - bw * 0.1, hip_y - bh * 0.5), arm_w * 0.35, STRAP)
            L.rect(cx - bw * 0.55, hip_y - bh * 0.5, cx + bw * 0.45, hip_y + bh * 0.5, BAG)
        arm(shoulder, -pose.arm_swing * s, 0.35, False)
        hair_and_head("side")
    return {"cx": cx, "sh_y": sh_y, "ph": ph, "view": pose.view}


def _pattern_mask(ident: Identity, anchors: dict, h: int, w: int) -> np.ndarray | None:
    """Where the top's print is, in body coordinates (stripes move with the body)."""
    if ident.pattern == "plain":
        return None
    ph, cx, sh_y = anchors["ph"], anchors["cx"], anchors["sh_y"]
    if ident.pattern == "logo":
        if anchors["view"] != "front":
            return None                                   # a chest logo: only seen from the front
        m = np.zeros((h, w), np.uint8)
        r = 0.045 * ph
        cv2.circle(m, _pt(cx, sh_y + 0.12 * ph), int(r * _ONE), 1, -1, cv2.LINE_8, _SHIFT)
        cv2.rectangle(m, _pt(cx - r * 1.4, sh_y + 0.12 * ph - r * 0.3), _pt(cx + r * 1.4, sh_y + 0.12 * ph + r * 0.3),
                      0, -1, cv2.LINE_8, _SHIFT)
        return m.astype(bool)
    period = ident.pattern_period * ph
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    hs = (np.floor((yy - sh_y) / period) % 2).astype(bool)
    vs = (np.floor((xx - cx) / period + 0.5) % 2).astype(bool)
    if ident.pattern == "hstripes":
        return np.broadcast_to(hs, (h, w))
    if ident.pattern == "vstripes":
        return np.broadcast_to(vs, (h, w))
    return hs ^ vs


def _person_layers(ident: Identity, pose: Pose, h: int, w: int, cx: float, y_feet: float, ph: float) -> _Layers:
    """Rasterise one person into fresh layers (mirrored for side views walking left)."""
    L = _Layers(h, w)
    mirror = pose.view == "side" and pose.mirror
    anchors = _draw_person(L, ident, pose, (w - 1 - cx) if mirror else cx, y_feet, ph)
    L.pattern = _pattern_mask(ident, anchors, h, w)
    if mirror:
        L.label = L.label[:, ::-1].copy()
        L.far = L.far[:, ::-1].copy()
        if L.pattern is not None:
            L.pattern = L.pattern[:, ::-1].copy()
    return L


def _draw_occluder(L: _Layers, rng: np.random.Generator) -> None:
    """Occasional partial occlusion (bin, railing, pole); same number of draws whatever happens."""
    u = rng.random(4)
    h, w = L.label.shape
    if u[0] >= 0.12:
        return
    if u[1] < 0.6:   # from the bottom: a bin, a bench or a railing
        y0 = h * (1.0 - (0.15 + 0.22 * u[2]))
        x0, x1 = (0.0, w) if u[3] < 0.5 else (w * u[3] * 0.5, w * (0.5 + u[3]))
        L.rect(x0, y0, x1, h + 1, OCCLUDER)
    else:            # a pole or a door frame on one side
        bw = w * (0.12 + 0.2 * u[2])
        x0 = -1 if u[3] < 0.5 else w - bw
        L.rect(x0, -1, x0 + bw, h + 1, OCCLUDER)


# ----------------------------------------------------------------------------------------------
# Shading: visible and infrared
# ----------------------------------------------------------------------------------------------

def _low_freq_noise(rng: np.random.Generator, h: int, w: int, cells: int = 6) -> np.ndarray:
    """Smooth noise in [-1, 1]: a small random grid upsampled (blotches, uneven walls)."""
    g = rng.uniform(-1, 1, (cells, max(2, cells // 2))).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _muted(rng: np.random.Generator, lo: float, hi: float, tint: float = 0.12) -> np.ndarray:
    """A grey level in [lo, hi] with a small per-channel tint (RGB float)."""
    return rng.uniform(lo, hi) * rng.uniform(1 - tint, 1 + tint, 3)


def _visible_background(cam: CameraProfile, rng: np.random.Generator, h: int, w: int, seed: int) -> np.ndarray:
    """A crop of the camera's persistent scene (wall/floor gradient and fixtures) plus clutter."""
    scene = _rng(seed, _S_CAMERA, cam.scene_seed, 0)
    # Real scenes are mostly muted (concrete, paint, tiles) with the odd saturated sign.
    wall = _muted(scene, 70, 200 if cam.outdoor else 225)
    floor = _muted(scene, 50, 150)
    horizon = scene.uniform(0.55, 0.8)
    fixtures = [(scene.uniform(0, 4), scene.uniform(0.05, 0.5), scene.uniform(0.15, 0.9),
                 scene.uniform(0.1, 0.5), _muted(scene, 30, 230, 0.1 if scene.random() < 0.8 else 0.5))
                for _ in range(10)]
    offset, hz_jit, n_clutter = rng.uniform(0, 3), rng.uniform(-0.08, 0.08), int(rng.integers(2, 7))
    clutter = [(rng.random(4), _muted(rng, 30, 230, 0.15)) for _ in range(n_clutter)]
    noise = _low_freq_noise(rng, h, w)
    grain = rng.standard_normal((h, w, 1)).astype(np.float32)

    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    hz = horizon + hz_jit
    img = np.where(yy < hz, wall * (0.8 + 0.25 * yy / hz), floor * (0.9 + 0.2 * (yy - hz)))
    img = np.broadcast_to(img, (h, w, 3)).astype(np.float32).copy()
    for x, y, fw, fh, col in fixtures:                    # scene coordinates: 4 crop widths wide
        x0 = (x - offset) * w
        if -fw * w < x0 < w:
            cv2.rectangle(img, (int(x0), int(y * h)), (int(x0 + fw * w), int((y + fh) * h)), col.tolist(), -1)
    for c, col in clutter:
        x0, y0 = int(c[0] * w), int(c[1] * h)
        cv2.rectangle(img, (x0, y0), (x0 + int(c[2] * w * 0.5), y0 + int(c[3] * h * 0.25)), col.tolist(), -1)
    img += (noise * 14.0)[..., None] + grain * 4.0
    return img


def _ir_background(cam: CameraProfile, rng: np.random.Generator, h: int, w: int, seed: int) -> np.ndarray:
    """Apparent temperature of the background: cool, smooth, a few warm blobs (a different model)."""
    scene = _rng(seed, _S_CAMERA, cam.scene_seed, 1)
    base = scene.uniform(0.12, 0.25) if cam.outdoor else scene.uniform(0.28, 0.4)
    ground = base + scene.uniform(-0.06, 0.1)
    horizon = scene.uniform(0.55, 0.8)
    blobs = [(scene.uniform(0, 4), scene.uniform(0, 1), scene.uniform(0.06, 0.25), scene.uniform(0.05, 0.3))
             for _ in range(6)]
    offset, warmth = rng.uniform(0, 3), rng.uniform(-0.05, 0.05)
    slabs = rng.random((int(rng.integers(1, 4)), 5))
    noise = _low_freq_noise(rng, h, w, cells=4)

    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    t = np.where(yy < horizon, base + 0.04 * yy, ground).astype(np.float32)
    t = np.broadcast_to(t, (h, w)).copy() + warmth
    for x, y, r, amp in blobs:                            # lamps, radiators, parked engines
        bx = (x - offset) * w
        if -2 * r * w < bx < w + 2 * r * w:
            cv2.circle(t, (int(bx), int(y * h)), max(1, int(r * w)), float(t[int(min(y, 0.999) * h), 0] + amp), -1)
    for c in slabs:                                      # low-contrast structures (walls, doors)
        x0, y0 = int(c[0] * w), int(c[1] * h)
        cv2.rectangle(t, (x0, y0), (x0 + int(c[2] * w), y0 + int(c[3] * h * 0.6)), float(base + 0.08 * (c[4] - 0.5)), -1)
    t += noise * 0.03
    return cv2.GaussianBlur(t, (0, 0), 0.06 * w)


def _visible_person(ident: Identity, L: _Layers, rng: np.random.Generator) -> np.ndarray:
    """RGB of the person's materials (float, 0..255), before lighting."""
    jit = rng.uniform(0.93, 1.07, (_N_LABELS, 3)).astype(np.float32)
    occ = rng.uniform(40, 200, 3)
    lut = np.zeros((_N_LABELS, 3), np.float32)
    lut[SKIN], lut[HAIR], lut[TOP] = ident.skin_rgb, ident.hair_rgb, ident.top_rgb
    lut[BOTTOM], lut[SHOE], lut[BAG] = ident.bottom_rgb, ident.shoe_rgb, ident.bag_rgb
    lut[STRAP] = np.asarray(ident.bag_rgb) * 0.8
    lut[OCCLUDER] = occ
    lut[1:] *= jit[1:]
    rgb = lut[L.label]
    if L.pattern is not None:
        on = L.pattern & (L.label == TOP)
        rgb[on] = np.asarray(ident.pattern_rgb, np.float32) * jit[TOP]
    rgb *= (1.0 - 0.3 * L.far.astype(np.float32))[..., None]
    return rgb


def _ir_person(ident: Identity, L: _Layers, rng: np.random.Generator) -> np.ndarray:
    """Apparent temperature (0..1) of the person's materials.  Never reads a colour."""
    jit = rng.uniform(-0.025, 0.025, _N_LABELS).astype(np.float32)
    occ_temp = rng.uniform(0.15, 0.5)
    lut = np.zeros(_N_LABELS, np.float32)
    lut[SKIN] = 0.95
    lut[HAIR] = 0.72
    lut[TOP] = 0.86 - 0.55 * ident.top_thickness          # thick fabric insulates: cooler surface
    lut[BOTTOM] = 0.8 - 0.5 * ident.bottom_thickness
    lut[SHOE] = 0.36
    lut[BAG] = ident.bag_temp
    lut[STRAP] = ident.bag_temp + 0.08
    lut[OCCLUDER] = occ_temp
    lut[1:] += jit[1:]
    t = lut[L.label]
    if L.pattern is not None:                            # print ink: weaker than in colour
        t[L.pattern & (L.label == TOP)] += ident.pattern_ir
    t -= 0.04 * L.far.astype(np.float32)
    return t


def _finish_visible(img: np.ndarray, cam: CameraProfile, rng: np.random.Generator, out_hw) -> np.ndarray:
    """Lighting, camera cast, blur, downsampling, noise and a JPEG pass; returns RGB uint8."""
    oh, ow = out_hw
    h, w = img.shape[:2]
    gain = cam.brightness * rng.uniform(0.72, 1.22)
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    sigma = cam.blur * rng.uniform(0.6, 1.6)
    noise_sigma = cam.noise * rng.uniform(0.6, 1.4)
    quality = int(rng.integers(35, 90))
    grain = rng.standard_normal((oh, ow, 3)).astype(np.float32)

    # Linear operations, so done after downsampling (4x fewer pixels) with the same result.
    img = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_AREA)
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    xx = np.linspace(-0.5, 0.5, ow, dtype=np.float32)[None, :, None]
    yy = np.linspace(-0.5, 0.5, oh, dtype=np.float32)[:, None, None]
    img = img * (gain * (1.0 + gx * xx + gy * yy)) * np.asarray(cam.cast, np.float32)
    img = np.clip(img + grain * noise_sigma, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _finish_ir(t: np.ndarray, alpha: np.ndarray, cam: CameraProfile, rng: np.random.Generator, seed: int,
               out_hw) -> np.ndarray:
    """Thermal optics: glow, blur, edge-enhancement halo, AGC, fixed-pattern and sensor noise."""
    oh, ow = out_hw
    h, w = t.shape
    glow_k = rng.uniform(0.1, 0.3)
    sigma = cam.blur * rng.uniform(0.8, 1.6)
    dde_k = rng.uniform(0.25, 0.7)
    lo_out, hi_out, gamma = rng.uniform(5, 40), rng.uniform(200, 250), rng.uniform(0.8, 1.25)
    noise_sigma = cam.noise * rng.uniform(0.6, 1.4)
    grain = rng.standard_normal((oh, ow)).astype(np.float32)
    col_jit = rng.standard_normal(ow).astype(np.float32)
    fpn = _rng(seed, _S_CAMERA, cam.scene_seed, 2).standard_normal(ow).astype(np.float32)  # per camera

    scale = h / oh
    warm = cv2.GaussianBlur(t * alpha, (0, 0), 3.0 * scale)   # heat glow spreads past the silhouette
    t = t + glow_k * warm * (1.0 - alpha)
    t = cv2.GaussianBlur(t, (0, 0), sigma * scale)
    t = cv2.resize(t, (ow, oh), interpolation=cv2.INTER_AREA)
    t = t + dde_k * (t - cv2.GaussianBlur(t, (0, 0), 4.0))   # detail enhancement: dark halo around hot bodies
    lo, hi = np.percentile(t, (1.0, 99.5))
    t = np.clip((t - lo) / max(hi - lo, 1e-3), 0, 1) ** gamma
    t = lo_out + (hi_out - lo_out) * t
    t = t + grain * noise_sigma + (fpn * 2.5 + col_jit * 0.8)[None, :]
    grey = np.clip(np.round(t), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _nir_person(ident: Identity, L: _Layers, rng: np.random.Generator) -> np.ndarray:
    """Near-infrared reflectance (0..1) of the person's materials, from the identity's dyes."""
    jit = rng.uniform(-0.03, 0.03, _N_LABELS).astype(np.float32)
    lut = np.zeros(_N_LABELS, np.float32)
    lut[SKIN] = 0.6 + 0.15 * float(np.dot(ident.skin_rgb, _LUMA)) / 255.0   # bright for every skin tone
    lut[HAIR] = 0.22 + 0.45 * float(np.dot(ident.hair_rgb, _LUMA)) / 255.0
    lut[TOP], lut[BOTTOM], lut[SHOE] = ident.nir_top, ident.nir_bottom, ident.nir_shoe
    lut[BAG], lut[STRAP] = ident.nir_bag, 0.9 * ident.nir_bag
    lut[OCCLUDER] = rng.uniform(0.15, 0.6)
    lut[1:] += jit[1:]
    r = lut[L.label]
    if L.pattern is not None:                            # the print's own dye
        r[L.pattern & (L.label == TOP)] = ident.nir_print + jit[TOP]
    r *= 1.0 - 0.25 * L.far.astype(np.float32)
    return r


def _nir_background(cam: CameraProfile, rng: np.random.Generator, h: int, w: int, seed: int) -> np.ndarray:
    """NIR reflectance of the camera's own scene: its fixtures' lightness, compressed (paints look alike)."""
    rgb = _visible_background(cam, rng, h, w, seed)
    return 0.18 + 0.55 * (np.clip(rgb, 0, 255) @ np.asarray(_NIR_LIGHTNESS, np.float32)) / 255.0


def _finish_nir(r: np.ndarray, cam: CameraProfile, rng: np.random.Generator, out_hw) -> np.ndarray:
    """Active 850 nm illumination: fall-off from the centre, blur, gain control, noise, JPEG; grey x 3."""
    oh, ow = out_hw
    falloff = rng.uniform(0.25, 0.6)
    sigma = cam.blur * rng.uniform(0.7, 1.5)
    lo_out, hi_out, gamma = rng.uniform(5, 30), rng.uniform(200, 250), rng.uniform(0.8, 1.25)
    noise_sigma = cam.noise * rng.uniform(0.8, 1.6)
    quality = int(rng.integers(35, 90))
    grain = rng.standard_normal((oh, ow)).astype(np.float32)

    r = cv2.resize(r, (ow, oh), interpolation=cv2.INTER_AREA)
    r = cv2.GaussianBlur(r, (0, 0), sigma)
    xx = np.linspace(-1, 1, ow, dtype=np.float32)[None, :]
    yy = np.linspace(-1, 1, oh, dtype=np.float32)[:, None]
    r = r * (1.0 - falloff * 0.5 * (xx ** 2 + yy ** 2))
    lo, hi = np.percentile(r, (1.0, 99.5))
    r = np.clip((r - lo) / max(hi - lo, 1e-3), 0, 1) ** gamma
    grey = np.clip(lo_out + (hi_out - lo_out) * r + grain * noise_sigma, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, quality])
    grey = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return np.repeat(grey[..., None], 3, axis=2)


def render_image(ident: Identity, modality: int, *, camera: int | CameraProfile | None = None, index: int = 0,
                 size: tuple[int, int] | None = DEFAULT_SIZE, seed: int = 0, pose: Pose | None = None,
                 return_labels: bool = False):
    """Render one pedestrian crop of ``ident``; RGB ``uint8`` of shape ``(h, w, 3)``.

    Args:
        modality: ``VISIBLE`` (0) or ``INFRARED`` (1) from ``admpff.runtime.contract``.
        camera: a SYSU camera id (1..6) of that modality, a :class:`CameraProfile`, or None for
            the generic camera of the modality (:func:`generic_camera`, as RegDB's).
        index: image index; with ``ident.pid``, ``modality``, the camera and ``seed`` it seeds
            every draw, so a given image is the same whatever else is generated.
        size: ``(height, width)``; None draws a realistic size (height 96..192, aspect ~2:1).
        pose: overrides the random pose (the random draws are still consumed, for stability).
        return_labels: also return the material label map at output size (nearest-neighbour).
    An infrared image has three identical channels.
    """
    if modality not in (VISIBLE, INFRARED):
        raise ValueError(f"modality must be {VISIBLE} (visible) or {INFRARED} (infrared), not {modality!r}")
    if camera is None:
        cam = generic_camera(modality, seed)
    else:
        cam = camera if isinstance(camera, CameraProfile) else camera_profile(camera)
    if cam.modality != modality:
        raise ValueError(f"camera {cam.cam_id} is {'infrared' if cam.modality else 'visible'}, "
                         f"not {'infrared' if modality else 'visible'}")
    rng = _rng(seed, _S_IMAGE, ident.pid, modality, cam.scene_seed, index)
    size_draw = rng.random(2)
    if size is None:
        oh = int(96 + 96 * size_draw[0])
        size = (oh, max(24, int(round(oh / (1.8 + 0.7 * size_draw[1])))))
    oh, ow = int(size[0]), int(size[1])
    if oh < 16 or ow < 8:
        raise ValueError(f"image size {size} is too small (at least 16x8)")
    h, w = 2 * oh, 2 * ow              # supersampled: area downsampling anti-aliases the label map
    random_pose = sample_pose(rng)
    pose = pose or random_pose
    jit = rng.uniform(-1, 1, 3)
    ph = 0.86 * h * (1.0 + 0.06 * jit[0])
    cx = 0.5 * w + 0.06 * w * jit[1]
    y_feet = 0.5 * (h + ph) + 0.025 * h * jit[2]
    L = _person_layers(ident, pose, h, w, cx, y_feet, ph)
    _draw_occluder(L, rng)
    alpha = (L.label > 0).astype(np.float32)
    # Cheap volume cue: silhouette edges darker (visible) or cooler (emissivity drops at grazing angles).
    rim = cv2.GaussianBlur(alpha, (0, 0), 0.02 * w + 0.5)
    bg_rng = _rng(seed, _S_IMAGE, ident.pid, modality, cam.scene_seed, index, 1)
    if modality == VISIBLE:
        person = _visible_person(ident, L, rng) * (0.72 + 0.28 * rim)[..., None]
        bg = _visible_background(cam, bg_rng, h, w, seed)
        img = _finish_visible(bg + alpha[..., None] * (person - bg), cam, rng, (oh, ow))
    elif cam.infrared == "nir":
        person = _nir_person(ident, L, rng) * (0.75 + 0.25 * rim)
        bg = _nir_background(cam, bg_rng, h, w, seed)
        img = _finish_nir(bg + alpha * (person - bg), cam, rng, (oh, ow))
    else:
        person = _ir_person(ident, L, rng) * (0.88 + 0.12 * rim)
        bg = _ir_background(cam, bg_rng, h, w, seed)
        img = _finish_ir(bg + alpha * (person - bg), alpha, cam, rng, seed, (oh, ow))
    if return_labels:
        return img, cv2.resize(L.label, (ow, oh), interpolation=cv2.INTER_NEAREST)
    return img


# ----------------------------------------------------------------------------------------------
# Writers in the official layouts
# ----------------------------------------------------------------------------------------------

@dataclass
class DatasetSummary:
    """What a writer produced."""

    root: str
    kind: str
    num_ids: int
    num_images: int
    num_visible: int
    num_infrared: int
    seconds: float
    splits: dict = field(default_factory=dict)       # name -> list of ids
    per_camera: dict = field(default_factory=dict)   # cam id -> image count

    def line(self) -> str:
        splits = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        return (f"{self.kind}: {self.num_ids} ids ({splits}), {self.num_images} images "
                f"({self.num_visible} visible, {self.num_infrared} infrared) in {self.root} "
                f"[{self.seconds:.1f}s]")


def _parse_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (int(v) for v in size)
    if h < 16 or w < 8 or h > 2048 or w > 2048:
        raise ValueError(f"image size (height, width) must be within 16x8 .. 2048x2048, got {h}x{w}")
    return h, w


class _StagedDir:
    """Write a data set into ``ROOT.tmp-XXXX`` and rename it into place, so no half set is left."""

    def __init__(self, root, overwrite: bool):
        self.root = Path(root)
        if self.root.exists():
            if not self.root.is_dir():
                raise FileExistsError(f"{self.root} exists and is not a directory")
            if any(self.root.iterdir()) and not overwrite:
                raise FileExistsError(f"{self.root} exists and is not empty (use --force / overwrite=True)")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix=self.root.name + ".tmp-", dir=self.root.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.root.exists():
            old = Path(tempfile.mkdtemp(prefix=self.root.name + ".old-", dir=self.root.parent))
            os.rmdir(old)
            os.replace(self.root, old)
        os.replace(self.tmp, self.root)
        os.chmod(self.root, 0o777 & ~_umask())   # mkdtemp makes 0700; give the umask's usual mode
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def _write_image(path: Path, rgb: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), rgb[..., ::-1], params):
        raise OSError(f"could not write {path}")


def sysu_cameras_of(pid: int, seed: int = 0) -> tuple[int, ...]:
    """The SYSU cameras that saw ``pid``: not all of them, but at least one RGB and one IR camera."""
    r = _rng(seed, _S_PRESENCE, pid)
    keep = r.random(6) < np.array([0.85, 0.65, 0.85, 0.8, 0.8, 0.7])
    rgb = [c for c in SYSU_RGB_CAMS if keep[c - 1]] or [SYSU_RGB_CAMS[int(r.integers(4))]]
    ir = [c for c in SYSU_IR_CAMS if keep[c - 1]] or [SYSU_IR_CAMS[int(r.integers(2))]]
    return tuple(sorted(rgb + ir))


def sysu_split(num_ids: int, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> dict[str, list[int]]:
    """Disjoint, sorted train/val/test pid lists over 1..num_ids (interleaved, as SYSU's are)."""
    if num_ids < 3:
        raise ValueError(f"a SYSU-style set needs at least 3 ids (train, val, test), got {num_ids}")
    perm = _rng(seed, _S_SPLIT).permutation(np.arange(1, num_ids + 1))
    n_val = max(1, int(round(fractions[1] * num_ids)))
    n_test = max(1, int(round(fractions[2] * num_ids)))
    n_train = num_ids - n_val - n_test
    if n_train < 1:
        n_train, n_val, n_test = 1, 1, num_ids - 2
    return {"train": sorted(perm[:n_train].tolist()), "val": sorted(perm[n_train:n_train + n_val].tolist()),
            "test": sorted(perm[n_train + n_val:].tolist())}


def _sysu_identity_job(job) -> dict[int, int]:
    """Render and write every image of one SYSU identity; returns images per camera."""
    tmp, pid, cams, per_cam, size, seed = job
    ident = make_identity(pid, seed)
    counts = {}
    for c in cams:
        folder = Path(tmp) / f"cam{c}" / f"{pid:04d}"
        folder.mkdir()
        profile = camera_profile(c)
        for k in range(per_cam):
            img = render_image(ident, profile.modality, camera=profile, index=k, size=size, seed=seed)
            _write_image(folder / f"{k + 1:04d}.jpg", img)
        counts[c] = per_cam
    return counts


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _run_jobs(fn, jobs: list, workers: int | None, total_images: int) -> Iterator:
    """``fn(job)`` for each job, in order; in worker processes when that pays off.

    Every image is seeded on its own, so the output is byte-identical whatever ``workers`` is.
    Workers are spawned (not forked): forking a parent that runs torch or OpenCV threads can hang.
    """
    workers = _default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or total_images < 400 or len(jobs) < 2:
        for job in jobs:
            yield fn(job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(fn, jobs, chunksize=max(1, len(jobs) // (8 * workers)))


def write_sysu(root, num_ids: int = 60, images_per_cam: int = 4, seed: int = 0,
               image_size: tuple[int, int] | None = DEFAULT_SIZE, *, overwrite: bool = False,
               progress: bool = False, workers: int | None = None) -> DatasetSummary:
    """Write a SYSU-MM01-layout set to ``root``.

    Writes ``root/cam{1..6}/<pid:04d>/<nnnn>.jpg`` (RGB cameras 1, 2, 4, 5; IR cameras 3, 6;
    ``images_per_cam`` images, numbered from 0001, in each camera that saw the id; see
    :func:`sysu_cameras_of`) and ``root/exp/{train,val,test}_id.txt``, each one line of
    comma-separated 1-based pids.  ``image_size`` is ``(height, width)``, or None for sizes that vary
    per image.  The set is staged in ``root.tmp-XXXX`` and renamed into place; a non-empty ``root`` is
    refused unless ``overwrite``.  ``workers`` processes render (default: the usable CPUs, at
    most 8; small sets stay in-process); the bytes do not depend on it.
    """
    t0 = time.perf_counter()
    num_ids, images_per_cam = int(num_ids), int(images_per_cam)
    if images_per_cam < 1:
        raise ValueError(f"images per camera must be at least 1, got {images_per_cam}")
    size = _parse_size(image_size)
    splits = sysu_split(num_ids, seed)
    cams = {pid: sysu_cameras_of(pid, seed) for pid in range(1, num_ids + 1)}
    total = sum(len(c) for c in cams.values()) * images_per_cam
    per_camera = {c: 0 for c in range(1, 7)}
    bar = _progress(total, progress, "sysu")
    try:
        with _StagedDir(root, overwrite) as tmp:
            for c in range(1, 7):
                (tmp / f"cam{c}").mkdir()
            jobs = [(str(tmp), pid, cams[pid], images_per_cam, size, seed) for pid in range(1, num_ids + 1)]
            for counts in _run_jobs(_sysu_identity_job, jobs, workers, total):
                for c, n in counts.items():
                    per_camera[c] += n
                    if bar is not None:
                        bar.update(n)
            (tmp / "exp").mkdir()
            for name in ("train", "val", "test"):
                (tmp / "exp" / f"{name}_id.txt").write_text(",".join(str(p) for p in splits[name]) + "\n")
    finally:
        if bar is not None:
            bar.close()
    n_vis = sum(per_camera[c] for c in SYSU_RGB_CAMS)
    n_ir = sum(per_camera[c] for c in SYSU_IR_CAMS)
    return DatasetSummary(str(root), "sysu", num_ids, n_vis + n_ir, n_vis, n_ir, time.perf_counter() - t0,
                          splits, per_camera)


def regdb_split(num_ids: int, trial: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Trial ``trial``'s (train ids, test ids): a random half/half split of 1..num_ids."""
    perm = _rng(seed, _S_TRIAL, trial).permutation(np.arange(1, num_ids + 1))
    n_train = num_ids // 2
    return sorted(perm[:n_train].tolist()), sorted(perm[n_train:].tolist())


def _regdb_identity_job(job) -> dict[tuple[int, str], list[str]]:
    """Render and write one RegDB identity's visible and thermal images; returns their paths."""
    tmp, pid, per_mod, size, seed = job
    ident = make_identity(pid, seed)
    gender = "female" if ident.female else "male"
    files = {}
    for modality, folder, tag in ((VISIBLE, "Visible", "v"), (INFRARED, "Thermal", "t")):
        (Path(tmp) / folder / str(pid)).mkdir()
        profile = generic_camera(modality, seed)
        names = []
        for k in range(per_mod):
            # RegDB was shot walking towards/away from the camera pair: front and back views only.
            view = "front" if (k // max(1, per_mod // 2)) % 2 == 0 else "back"
            pose = replace(sample_pose(_rng(seed, _S_IMAGE, pid, modality, profile.scene_seed, k, 2)), view=view)
            img = render_image(ident, modality, camera=profile, index=k, size=size, seed=seed, pose=pose)
            serial = (pid - 1) * per_mod + k + 1
            rel = f"{folder}/{pid}/{gender}_{view}_{tag}_{serial:05d}_{pid}.bmp"
            _write_image(Path(tmp) / rel, img)
            names.append(rel)
        files[(pid, tag)] = names
    return files


def write_regdb(root, num_ids: int = 40, images_per_modality: int = 10, seed: int = 0,
                image_size: tuple[int, int] | None = DEFAULT_SIZE, *, trials: int = 10, overwrite: bool = False,
                progress: bool = False, workers: int | None = None) -> DatasetSummary:
    """Write a RegDB-layout set to ``root``.

    Writes ``root/Visible/<id>/<gender>_<view>_v_<serial:05d>_<id>.bmp`` and the same under
    ``Thermal`` with ``_t_`` (ids 1..num_ids, ``images_per_modality`` each), and
    ``root/idx/{train,test}_{visible,thermal}_{1..trials}.txt`` with lines ``<path relative to
    root> <label>``.  Each trial splits the ids half/half at random (seeded by the trial); train
    labels are 0..n_train-1 in sorted id order, test labels are the id's own 0-based index
    (``id - 1``).  Staged, renamed into place and parallelised like :func:`write_sysu`.
    """
    t0 = time.perf_counter()
    num_ids, per_mod, trials = int(num_ids), int(images_per_modality), int(trials)
    if num_ids < 2:
        raise ValueError(f"a RegDB-style set needs at least 2 ids (train and test halves), got {num_ids}")
    if per_mod < 1:
        raise ValueError(f"images per modality must be at least 1, got {per_mod}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    size = _parse_size(image_size)
    files: dict[tuple[int, str], list[str]] = {}
    bar = _progress(2 * num_ids * per_mod, progress, "regdb")
    try:
        with _StagedDir(root, overwrite) as tmp:
            for folder in ("Visible", "Thermal"):
                (tmp / folder).mkdir()
            jobs = [(str(tmp), pid, per_mod, size, seed) for pid in range(1, num_ids + 1)]
            for names in _run_jobs(_regdb_identity_job, jobs, workers, 2 * num_ids * per_mod):
                files.update(names)
                if bar is not None:
                    bar.update(2 * per_mod)
            (tmp / "idx").mkdir()
            for trial in range(1, trials + 1):
                train_ids, test_ids = regdb_split(num_ids, trial, seed)
                for tag, mod_name in (("v", "visible"), ("t", "thermal")):
                    train = [f"{p} {label}" for label, pid in enumerate(train_ids) for p in files[(pid, tag)]]
                    test = [f"{p} {pid - 1}" for pid in test_ids for p in files[(pid, tag)]]
                    (tmp / "idx" / f"train_{mod_name}_{trial}.txt").write_text("\n".join(train) + "\n")
                    (tmp / "idx" / f"test_{mod_name}_{trial}.txt").write_text("\n".join(test) + "\n")
    finally:
        if bar is not None:
            bar.close()
    n = num_ids * per_mod
    t1, te1 = regdb_split(num_ids, 1, seed)
    return DatasetSummary(str(root), "regdb", num_ids, 2 * n, n, n, time.perf_counter() - t0,
                          {"train(trial 1)": t1, "test(trial 1)": te1}, {1: n, 2: n})


# ----------------------------------------------------------------------------------------------
# A synthetic surveillance clip
# ----------------------------------------------------------------------------------------------

@dataclass
class VideoSummary:
    """What :func:`render_video` wrote.  ``boxes``: ``(frame, person, x, y, w, h)`` ground truth."""

    path: str
    frames: int
    fps: float
    size: tuple[int, int]
    infrared_frames: list = field(default_factory=list)
    boxes: list = field(default_factory=list)


def _video_scene(rng: np.random.Generator, h: int, w: int):
    """Background of the clip, as colour and as temperature: wall with shop fronts, tiled floor."""
    horizon = int(h * rng.uniform(0.28, 0.38))
    vis = np.empty((h, w, 3), np.float32)
    vis[:horizon] = _muted(rng, 110, 190)
    vis[horizon:] = _muted(rng, 90, 150)
    ir = np.empty((h, w), np.float32)
    ir[:horizon], ir[horizon:] = 0.3, 0.24
    x = 0
    while x < w:                                        # shop fronts / doors / windows along the wall
        fw = int(rng.uniform(0.08, 0.2) * w)
        top = int(rng.uniform(0.05, 0.5) * horizon)
        cv2.rectangle(vis, (x + 4, top), (x + fw - 4, horizon), _muted(rng, 40, 220, 0.25).tolist(), -1)
        cv2.rectangle(ir, (x + 4, top), (x + fw - 4, horizon), float(rng.uniform(0.2, 0.5)), -1)
        x += fw
    for k in range(1, 14):                              # floor tile lines in perspective
        y = horizon + int((h - horizon) * (k / 13) ** 1.6)
        cv2.line(vis, (0, y), (w, y), (70, 70, 70), 1)
    for k in range(-12, 13):
        cv2.line(vis, (w // 2 + k * w // 24, horizon), (w // 2 + k * w // 5, h), (70, 70, 70), 1)
    vis += _low_freq_noise(rng, h, w, 8)[..., None] * 10
    ir = cv2.GaussianBlur(ir + _low_freq_noise(rng, h, w, 6) * 0.03, (0, 0), 3)
    return vis, ir, horizon


def render_video(path, seconds: float = 6.0, fps: float = 10, size: tuple[int, int] = (576, 768), seed: int = 0,
                 people: int = 6, night_after: float | None = None) -> VideoSummary:
    """Write a synthetic surveillance clip (MJPG in AVI) with ``people`` generated pedestrians.

    ``size`` is ``(height, width)``.  Pedestrians walk across (side views) or along the floor
    (front/back views), scaled by perspective.  From ``night_after`` seconds on (if given) frames are
    rendered in infrared, as a camera switching to night mode.  Returns the ground-truth boxes.
    """
    h, w = (int(v) for v in size)
    n_frames = int(round(seconds * fps))
    if n_frames < 1 or h < 64 or w < 64:
        raise ValueError(f"need at least one frame of at least 64x64 (got {n_frames} frames of {h}x{w})")
    rng = _rng(seed, _S_VIDEO)
    vis_bg, ir_bg, horizon = _video_scene(rng, h, w)
    walkers = []
    for i in range(int(people)):
        ident = make_identity(10_000 + i, seed)
        kind = rng.random()
        y_feet = rng.uniform(horizon + 0.3 * (h - horizon), h * 0.98)
        ph = 0.95 * (y_feet - horizon) * rng.uniform(0.9, 1.1)
        speed = ph * rng.uniform(0.35, 0.6)                         # body heights per second
        t_start = rng.uniform(-0.5, max(0.1, seconds * 0.6))
        if kind < 0.7:   # crossing left->right or right->left
            direction = 1.0 if rng.random() < 0.5 else -1.0
            x0 = -0.3 * ph if direction > 0 else w + 0.3 * ph
            walkers.append(dict(ident=ident, view="side", mirror=direction < 0, x0=x0, vx=direction * speed,
                                y0=y_feet, vy=0.0, ph=ph, t0=t_start, cadence=rng.uniform(1.6, 2.1)))
        else:            # walking towards or away from the camera
            towards = rng.random() < 0.5
            walkers.append(dict(ident=ident, view="front" if towards else "back", mirror=False,
                                x0=rng.uniform(0.15, 0.85) * w, vx=0.0, y0=y_feet,
                                vy=(1 if towards else -1) * 0.25 * speed, ph=ph, t0=t_start,
                                cadence=rng.uniform(1.6, 2.1)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot open a video writer for {path}")
    summary = VideoSummary(str(path), n_frames, float(fps), (h, w))
    fpn = rng.standard_normal(w).astype(np.float32)
    try:
        for f in range(n_frames):
            t = f / fps
            infrared = night_after is not None and t >= night_after
            frame = ir_bg.copy() if infrared else vis_bg.copy()
            placed = []
            for i, wk in enumerate(walkers):
                dt = t - wk["t0"]
                if dt < 0:
                    continue
                y_feet = wk["y0"] + wk["vy"] * dt
                ph = wk["ph"] * max(0.2, (y_feet - horizon) / max(1.0, wk["y0"] - horizon))
                cx = wk["x0"] + wk["vx"] * dt
                if y_feet <= horizon + 10 or cx < -ph or cx > w + ph:
                    continue
                placed.append((y_feet, i, wk, cx, ph))
            for y_feet, i, wk, cx, ph in sorted(placed, key=lambda p: p[0]):     # far ones first
                bw, bh = int(ph * 0.7) + 4, int(ph * 1.05) + 4
                x0, y0 = int(cx - bw / 2), int(y_feet - ph * 1.02)
                pose = Pose(view=wk["view"], mirror=wk["mirror"], phase=2 * np.pi * wk["cadence"] * (t - wk["t0"]),
                            stride=0.4, arm_swing=0.3)
                L = _person_layers(wk["ident"], pose, bh, bw, bw / 2, y_feet - y0, ph)
                prng = _rng(seed, _S_VIDEO, i, f)
                value = _ir_person(wk["ident"], L, prng) if infrared else _visible_person(wk["ident"], L, prng)
                # Clip the sprite to the frame.
                fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(w, x0 + bw), min(h, y0 + bh)
                if fx1 <= fx0 or fy1 <= fy0:
                    continue
                sl = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
                mask = L.label[sl] > 0
                frame[fy0:fy1, fx0:fx1][mask] = value[sl][mask]
                ys, xs = np.nonzero(mask)
                if len(ys):
                    summary.boxes.append((f, i, fx0 + int(xs.min()), fy0 + int(ys.min()),
                                          int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))
            noise = _rng(seed, _S_VIDEO, 1_000_000 + f).standard_normal((h, w)).astype(np.float32)
            if infrared:
                summary.infrared_frames.append(f)
                frame = cv2.GaussianBlur(frame, (0, 0), 1.2)
                frame = frame + 0.5 * (frame - cv2.GaussianBlur(frame, (0, 0), 6))
                grey = np.clip(20 + 220 * frame + noise * 3 + fpn[None, :] * 2, 0, 255).astype(np.uint8)
                out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
            else:
                frame = cv2.GaussianBlur(frame, (0, 0), 0.7) + noise[..., None] * 3
                out = np.clip(frame, 0, 255).astype(np.uint8)[..., ::-1]
            writer.write(np.ascontiguousarray(out))
    finally:
        writer.release()
    return summary


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

class _UsageError(Exception):
    pass


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    """admpff's parser (help shows every default) that reports a bad argument as one line (no usage
    block) and exit 2."""
    from admpff.runtime.cli_support import make_parser

    parser = make_parser(prog, description)

    def error(message):
        raise _UsageError(message)

    parser.error = error
    return parser


def _size_arg(text: str):
    if text.lower() == "random":
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x64 or 'random', got {text!r}") from None
    try:
        return _parse_size((h, w))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``admpff-make-data {sysu,regdb} ROOT [--ids N] [--per-cam K] [--seed S] [--size HxW] [--force]``."""
    prog = "admpff-make-data"
    parser = _parser(prog, "Generate a synthetic visible-infrared re-ID data set in the official SYSU-MM01 "
                           "or RegDB layout.")
    parser.add_argument("kind", choices=["sysu", "regdb"], help="which layout to write")
    parser.add_argument("root", help="output folder (must not exist or be empty, unless --force)")
    parser.add_argument("--ids", type=int, default=None, help="identities (default: sysu 60, regdb 40)")
    parser.add_argument("--per-cam", type=int, default=None,
                        help="images per camera (sysu; default: 4) or per modality (regdb; default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--size", type=_size_arg, default=DEFAULT_SIZE, metavar="HxW",
                        help="image height x width (default: 128x64), or 'random' for varying sizes")
    parser.add_argument("--force", action="store_true", help="replace a non-empty ROOT")
    try:
        args = parser.parse_args(argv)
        if args.seed < 0:
            raise _UsageError(f"--seed must be non-negative, got {args.seed}")
        if args.ids is not None and args.ids < (3 if args.kind == "sysu" else 2):
            raise _UsageError(f"--ids must be at least {3 if args.kind == 'sysu' else 2}, got {args.ids}")
        if args.per_cam is not None and args.per_cam < 1:
            raise _UsageError(f"--per-cam must be at least 1, got {args.per_cam}")
        root = Path(args.root)
        if root.exists() and not root.is_dir():
            raise _UsageError(f"ROOT {root} is an existing file; give a folder")
        if root.exists() and any(root.iterdir()) and not args.force:
            raise _UsageError(f"{root} exists and is not an empty folder (use --force to replace it)")
        for parent in root.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise _UsageError(f"ROOT {root}: {parent} is a file, not a folder")
                break
    except _UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.kind == "sysu":
            summary = write_sysu(root, num_ids=args.ids or 60, images_per_cam=args.per_cam or 4, seed=args.seed,
                                 image_size=args.size, overwrite=args.force, progress=True)
        else:
            summary = write_regdb(root, num_ids=args.ids or 40, images_per_modality=args.per_cam or 10,
                                  seed=args.seed, image_size=args.size, overwrite=args.force, progress=True)
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written to {root}", file=sys.stderr)
        return 130
    print(summary.line())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
