"""A calibration crop's modality comes from what knows it; its own colour is only the last resort.

Real crops of the colour clip shared/data/vtest.avi must all come out visible: the old per-crop rule
(the runtime's frame measure applied to a crop) labelled a quarter of them infrared.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from admpff.calibration import FolderSource, VideoSource, build_calibration_set, parse_calib_spec
from admpff.runtime.contract import INFRARED, VISIBLE, InputContract

ROOT = Path(__file__).resolve().parents[1]
VTEST = ROOT.parent / "shared" / "data" / "vtest.avi"
SMALL = InputContract(height=32, width=16)
needs_clip = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} (the shared colour clip) is absent")


@pytest.fixture(scope="module")
def clip_crops():
    """Person crops the default detector cuts from the first 150 frames of the clip (every 10th frame)."""
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} (the shared colour clip) is absent")
    source = VideoSource(VTEST, every_n_frames=10, max_frames=150, progress=False)
    refs = source.scan()
    assert len(refs) >= 10, "the detector found too few people to test with"
    return refs


def _grey(image):
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


@needs_clip
def test_crops_cut_from_the_colour_clip_take_the_frames_modality(clip_crops):
    assert {r.modality for r in clip_crops} == {VISIBLE}
    assert {r.modality_from for r in clip_crops} == {"frame"}


@needs_clip
def test_a_flat_folder_of_real_clip_crops_is_all_visible(clip_crops, tmp_path):
    for i, ref in enumerate(clip_crops):
        assert cv2.imwrite(str(tmp_path / f"crop{i:03d}.jpg"), ref.load())
    refs = FolderSource(tmp_path).scan()
    assert len(refs) == len(clip_crops)
    assert {r.modality for r in refs} == {VISIBLE}, sum(r.modality == INFRARED for r in refs)
    assert {r.modality_from for r in refs} == {"colour"}  # nothing better knew it: the last resort, reported
    calset = build_calibration_set(FolderSource(tmp_path), num_samples=len(refs), contract=SMALL)
    assert calset.counts == {"visible": len(refs), "infrared": 0}
    assert "a guess from each crop's colour" in calset.modality_report()


@needs_clip
def test_grey_crops_are_infrared_only_where_nothing_else_says(clip_crops, tmp_path, caplog):
    flat, labelled = tmp_path / "flat", tmp_path / "cam" / "visible"
    for folder in (flat, labelled):
        folder.mkdir(parents=True)
        for i, ref in enumerate(clip_crops[:8]):
            assert cv2.imwrite(str(folder / f"g{i}.jpg"), _grey(ref.load()))
    assert {r.modality for r in FolderSource(flat).scan()} == {INFRARED}
    # The folder layout outranks the colour: kept visible, counted, and warned about.
    caplog.set_level("WARNING")
    calset = build_calibration_set(FolderSource(tmp_path / "cam"), num_samples=8, contract=SMALL)
    assert calset.counts["visible"] == 8 and calset.modality_from == {"folder": 8}
    assert calset.contradictions == {"folder": 8}
    assert any("8 of 8 calibration crops labelled visible by their folder are grey" in m for m in caplog.messages)


@needs_clip
def test_explicit_modality_for_sources_without_a_prefix(clip_crops, tmp_path):
    for i, ref in enumerate(clip_crops[:4]):
        assert cv2.imwrite(str(tmp_path / f"c{i}.jpg"), ref.load())
    source = parse_calib_spec(str(tmp_path), modality="infrared")  # --calib-modality infrared
    assert {(r.modality, r.modality_from) for r in source.scan()} == {(INFRARED, "flag")}
    prefixed = parse_calib_spec(f"visible:{tmp_path}", modality="infrared")  # a prefix wins over the flag
    assert {r.modality for r in prefixed.scan()} == {VISIBLE}


class _OneBoxDetector:
    """The detector interface VideoSource documents (``detect(frame) -> (boxes, scores)``): one fixed box,
    so this test is about the modality decision, not about detection."""

    def detect(self, frame):
        return np.array([[100, 100, 160, 260]], np.float32), np.array([1.0], np.float32)


@needs_clip
def test_a_few_grey_frames_do_not_flip_a_colour_camera(tmp_path):
    cap = cv2.VideoCapture(str(VTEST))
    frames = [cap.read()[1] for _ in range(30)]
    cap.release()
    video = tmp_path / "blip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, frames[0].shape[1::-1])
    for i, frame in enumerate(frames):
        writer.write(_grey(frame) if 10 <= i < 13 else frame)  # three grey frames: a glitch, not a night switch
    writer.release()
    refs = VideoSource(video, detector=_OneBoxDetector(), every_n_frames=1, max_frames=30, progress=False).scan()
    assert len(refs) == 30
    assert {(r.modality, r.modality_from) for r in refs} == {(VISIBLE, "frame")}
    # Each crop on its own: the three grey ones would have been called infrared.
    from admpff.calibration import infer_modality
    assert sum(infer_modality(r.load()) == INFRARED for r in refs) == 3
