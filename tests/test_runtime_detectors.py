"""Detectors (HOG on the real clip, YOLO ONNX decoding on a hand-built model, MOT files) and the
per-frame visible/infrared decision."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from admpff.runtime.detectors import (DetectorError, HOGPersonDetector, MotFileDetector, YoloOnnxDetector,
                                      build_detector, letterbox, nms)
from admpff.runtime.modality import (CHROMA_THRESHOLD, INFRARED, VISIBLE, ModalitySwitch, chroma_spread,
                                     frame_modality, resolve_modality)
from admpff.runtime.tracker import iou_matrix

from _tiny_model import build_tiny_yolo

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path(os.environ.get("ADMPFF_VTEST", ROOT.parent / "shared" / "data" / "vtest.avi"))


@pytest.fixture(scope="module")
def vtest_frames() -> list[np.ndarray]:
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} absent (the OpenCV sample clip; apt-get install opencv-doc or set ADMPFF_VTEST)")
    cap = cv2.VideoCapture(str(VTEST))
    frames = []
    for i in range(101):
        ok, frame = cap.read()
        if not ok:
            break
        if i % 20 == 0:
            frames.append(frame)
    cap.release()
    assert len(frames) == 6
    return frames


# ---------------------------------------------------------------------------------------------- HOG
def test_hog_finds_people_on_vtest(vtest_frames):
    det = HOGPersonDetector()
    total = 0
    for frame in vtest_frames:
        boxes, scores = det.detect(frame)
        assert boxes.dtype == np.float32 and scores.dtype == np.float32
        assert boxes.shape == (len(scores), 4)
        h, w = frame.shape[:2]
        assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= w)
        assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= h)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        # people are taller than wide
        assert np.all((boxes[:, 3] - boxes[:, 1]) > (boxes[:, 2] - boxes[:, 0]))
        total += len(boxes)
    assert total >= 2 * len(vtest_frames), f"HOG found only {total} people in {len(vtest_frames)} frames"


def test_hog_downscales_wide_frames_and_maps_boxes_back(vtest_frames):
    frame = vtest_frames[1]
    big = cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    ref_boxes, _ = HOGPersonDetector(max_width=None).detect(frame)
    big_boxes, _ = HOGPersonDetector(max_width=frame.shape[1]).detect(big)
    assert len(ref_boxes) > 0 and len(big_boxes) >= len(ref_boxes)
    # the same people, in the big frame's coordinates (resampling may add or move a box slightly)
    iou = iou_matrix(ref_boxes * 2, big_boxes)
    assert np.all(iou.max(axis=1) > 0.7), iou
    assert big_boxes[:, 2].max() > frame.shape[1]  # coordinates are the big frame's


def test_hog_on_blank_frame_returns_empty_arrays():
    boxes, scores = HOGPersonDetector().detect(np.zeros((240, 320, 3), np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.mark.parametrize("shape", [(96, 128, 3), (10, 10, 3), (100, 60, 3)])
def test_hog_on_frame_smaller_than_its_window_returns_empty(shape):
    # OpenCV's detectMultiScale segfaults below its 64x128 window; run it in a child so a crash
    # fails this test instead of killing the suite.
    code = ("import numpy as np; from admpff.runtime.detectors import HOGPersonDetector; "
            f"b, s = HOGPersonDetector().detect(np.full({shape!r}, 128, np.uint8)); print(b.shape, s.shape)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "(0, 4) (0,)"


def test_nms_keeps_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 20], [1, 1, 11, 21], [50, 50, 60, 70]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.3], np.float32), 0.5)
    assert sorted(keep.tolist()) == [1, 2]


# ---------------------------------------------------------------------------------------------- YOLO
def _yolo_output(n: int = 100, nc: int = 80) -> np.ndarray:
    """[1, 4+nc, n] in 640x640 letterboxed pixels: two people (one duplicated), a car, a weak person."""
    out = np.zeros((4 + nc, n), np.float32)
    out[:4, :] = np.array([[10], [10], [4], [4]], np.float32)  # filler boxes, score 0

    def put(i, cx, cy, w, h, cls, score):
        out[:4, i] = (cx, cy, w, h)
        out[4 + cls, i] = score

    put(3, 320, 320, 100, 200, 0, 0.9)    # person A
    put(4, 325, 322, 100, 200, 0, 0.8)    # duplicate of A -> suppressed by NMS
    put(7, 100, 200, 40, 120, 0, 0.6)     # person B
    put(9, 500, 400, 120, 80, 2, 0.95)    # a car: not a person
    put(11, 560, 300, 40, 100, 0, 0.1)    # person below the confidence threshold
    return out[None]


def _expected_a_b():
    # frame 768x576 -> scale 640/768 = 0.8333, resized 640x480, padded 80 px top and bottom
    r, pad_top = 640 / 768, 80
    a = [(320 - 50) / r, (320 - 100 - pad_top) / r, (320 + 50) / r, (320 + 100 - pad_top) / r]
    b = [(100 - 20) / r, (200 - 60 - pad_top) / r, (100 + 20) / r, (200 + 60 - pad_top) / r]
    return np.array([a, b], np.float32)


def test_letterbox_geometry():
    img, r, (px, py) = letterbox(np.zeros((576, 768, 3), np.uint8), (640, 640))
    assert img.shape == (640, 640, 3)
    assert r == pytest.approx(640 / 768) and (px, py) == (0, 80)
    assert img[0, 0, 0] == 114 and img[320, 320, 0] == 0


@pytest.mark.parametrize("transposed", [False, True])
def test_yolo_onnx_decodes_nms_and_letterbox(tmp_path, transposed):
    out = _yolo_output()
    if transposed:
        out = out.transpose(0, 2, 1).copy()
    path = build_tiny_yolo(tmp_path / "yolo.onnx", out)
    det = build_detector(str(path), conf_threshold=0.25)
    assert isinstance(det, YoloOnnxDetector)
    boxes, scores = det.detect(np.zeros((576, 768, 3), np.uint8))
    np.testing.assert_allclose(scores, [0.9, 0.6], rtol=1e-6)
    np.testing.assert_allclose(boxes, _expected_a_b(), atol=0.5)


def test_yolo_uses_names_metadata_for_few_anchors(tmp_path):
    # 10 anchors < 84 attributes: the shape alone would be ambiguous, the names metadata settles it
    out = np.zeros((1, 10, 4 + 80), np.float32)
    out[0, 2, :4] = (320, 320, 64, 128)
    out[0, 2, 4] = 0.7
    path = build_tiny_yolo(tmp_path / "few.onnx", out, names={i: f"c{i}" for i in range(80)})
    boxes, scores = YoloOnnxDetector(path).detect(np.zeros((640, 640, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[288, 256, 352, 384]], atol=0.5)
    assert scores.tolist() == pytest.approx([0.7])


def test_yolo_rejects_wrong_shape_and_bad_files(tmp_path):
    path = build_tiny_yolo(tmp_path / "flat.onnx", np.zeros((1, 84), np.float32))
    with pytest.raises(DetectorError, match=r"expected \[1, 4\+classes, N\]") as exc:
        YoloOnnxDetector(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(DetectorError, match="not found"):
        build_detector(str(tmp_path / "missing.onnx"))
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DetectorError, match="cannot load YOLO model corrupt.onnx") as exc:
        YoloOnnxDetector(bad)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------- MOT
def test_mot_file_detector(tmp_path):
    det_txt = tmp_path / "det.txt"
    det_txt.write_text("1,-1,10,20,30,60,0.9,-1,-1,-1\n"
                       "1,-1,100,50,20,40,0.4,-1,-1,-1\n"
                       "3,-1,5,5,10,10,0.7,-1,-1,-1\n")
    det = build_detector(str(det_txt))
    assert isinstance(det, MotFileDetector)
    frame = np.zeros((100, 120, 3), np.uint8)
    boxes, scores = det.detect(frame, frame_index=0)  # 0-based index -> MOT frame 1
    np.testing.assert_allclose(boxes, [[10, 20, 40, 80], [100, 50, 120, 90]])  # second box clipped to 120
    np.testing.assert_allclose(scores, [0.9, 0.4])
    assert det.detect(frame)[0].shape == (0, 4)        # internal counter: frame 2 has nothing
    assert len(det.detect(frame)[0]) == 1              # frame 3
    assert len(MotFileDetector(det_txt, min_score=0.5).detect(None, 0)[0]) == 1


def test_mot_gt_keeps_considered_pedestrians(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,20,40,1,1,1.0\n"    # pedestrian
                  "1,2,50,10,20,40,0,1,1.0\n"    # ignored (consider flag 0)
                  "1,3,90,10,30,20,1,3,1.0\n")   # a car
    boxes, _ = MotFileDetector(gt).detect(None, 0)
    np.testing.assert_allclose(boxes, [[10, 10, 30, 50]])


def test_mot_malformed_file_is_one_line_error(tmp_path):
    bad = tmp_path / "det.txt"
    bad.write_text("1,-1,10,20,30,60,0.9\nhello,world\n")
    with pytest.raises(DetectorError, match=r"det.txt:2: not a MOT row") as exc:
        MotFileDetector(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(DetectorError, match="unknown detector"):
        build_detector("ssd.caffemodel")


# ---------------------------------------------------------------------------------------------- modality
def test_auto_modality_colour_vs_grey(vtest_frames):
    frame = vtest_frames[0]
    grey = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    tinted = np.clip(grey.astype(np.int16) + np.array([25, 0, 20]), 0, 255).astype(np.uint8)  # IR cast
    assert chroma_spread(frame) > 3 * CHROMA_THRESHOLD
    assert frame_modality(frame) == VISIBLE
    assert frame_modality(grey) == INFRARED
    assert frame_modality(tinted) == INFRARED
    assert frame_modality(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)) == INFRARED  # single channel
    assert resolve_modality("auto", frame) == VISIBLE
    assert resolve_modality("auto", grey) == INFRARED
    assert resolve_modality("IR", frame) == INFRARED  # a fixed setting wins over the image
    assert resolve_modality("visible", grey) == VISIBLE
    with pytest.raises(ValueError):
        resolve_modality("ultraviolet", frame)


def test_modality_switch_hysteresis(vtest_frames):
    colour = vtest_frames[0]
    grey = cv2.cvtColor(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    sw = ModalitySwitch(frames_to_switch=3)
    assert sw.update(colour) == VISIBLE
    # two odd frames do not flip the camera, and a colour frame resets the streak
    assert sw.update(grey) == VISIBLE and sw.update(grey) == VISIBLE
    assert sw.update(colour) == VISIBLE
    assert [sw.update(grey) for _ in range(3)] == [VISIBLE, VISIBLE, INFRARED]
    assert sw.switches == 1
    assert resolve_modality("auto", colour, sw) == INFRARED  # one colour frame: still infrared
