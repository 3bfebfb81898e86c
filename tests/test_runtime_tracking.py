"""Per-camera tracker: ids across frames, new ids, deletion, ByteTrack's low-score stage, and the
embedding schedule."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from admpff.runtime.detectors import HOGPersonDetector
from admpff.runtime.tracker import EmbeddingSchedule, Tracker, crop, iou_matrix, touches_border

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path(os.environ.get("ADMPFF_VTEST", ROOT.parent / "shared" / "data" / "vtest.avi"))
FRAME = (480, 640, 3)


def unit(rng, dim=16):
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def person(x, y, w=40, h=100):
    return [x, y, x + w, y + h]


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]], atol=1e-6)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (1, 0)


def test_ids_persist_for_moving_boxes_and_new_people_get_new_ids():
    tr = Tracker(min_hits=2)
    ids_a, ids_b = set(), set()
    for f in range(20):
        boxes = [person(100 + 6 * f, 100), person(500 - 6 * f, 120)]  # two people walking past each other
        scores = [0.9, 0.8]
        if f >= 10:
            boxes.append(person(300, 300 + 2 * f))  # a third person appears
            scores.append(0.95)
        tracks = tr.update(np.array(boxes, np.float32), np.array(scores, np.float32), f, FRAME)
        by_x = {int(round(t.box[0])): t for t in tracks}
        ids_a.add(by_x[100 + 6 * f].track_id)
        ids_b.add(by_x[500 - 6 * f].track_id)
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b
    assert len(tr.tracks) == 3 and tr.tracks_started == 3
    third = [t for t in tr.tracks if t.track_id not in ids_a | ids_b][0]
    assert third.hits == 10 and third.confirmed and third.start_frame == 10
    assert {t.track_id for t in tr.active_tracks} == {t.track_id for t in tr.tracks}


def test_crossing_people_keep_their_ids_thanks_to_velocity():
    # two people cross; at the crossing frames IoU alone is ambiguous, the motion model is not
    tr = Tracker(min_hits=1, match_iou=0.1)
    first = {}
    for f in range(30):
        a, b = person(100 + 10 * f, 100), person(390 - 10 * f, 104)
        tracks = tr.update(np.array([a, b], np.float32), np.array([0.9, 0.9], np.float32), f, FRAME)
        for t in tracks:
            key = "a" if abs(t.box[0] - a[0]) < 1 else "b"
            first.setdefault(key, t.track_id)
            assert first[key] == t.track_id, f"identity switch at frame {f}"


def test_lost_track_survives_max_age_then_is_deleted():
    tr = Tracker(min_hits=1, max_age=3)
    tr.update(np.array([person(100, 100)], np.float32), np.array([0.9], np.float32), 0)
    tid = tr.tracks[0].track_id
    for f in range(1, 4):
        assert tr.update(np.zeros((0, 4)), np.zeros(0), f) == []
        assert tr.tracks and tr.tracks[0].time_since_update == f
    # re-detected within max_age: same id
    tr.update(np.array([person(100, 100)], np.float32), np.array([0.9], np.float32), 4)
    assert tr.tracks[0].track_id == tid and tr.tracks[0].time_since_update == 0
    for f in range(5, 9):
        tr.update(np.zeros((0, 4)), np.zeros(0), f)
    assert tr.tracks == [] and tr.tracks_removed == 1


def test_coasting_between_detector_frames_moves_tracks_and_keeps_velocity_exact():
    """--detect-every N: on skipped frames tracks move by their velocity, stay shown and are not
    counted as missed; the next detection corrects the velocity over all the frames in between."""
    tr = Tracker(min_hits=1, velocity_smoothing=1.0)  # velocity = the newest displacement, to check it exactly
    walk = lambda f: person(100 + 4 * f, 100)  # 4 px per frame to the right
    for f in (0, 1):
        tr.update(np.array([walk(f)], np.float32), np.array([0.9], np.float32), f, FRAME)
    t = tr.tracks[0]
    np.testing.assert_allclose(t.velocity, [4, 0, 4, 0])
    shown = tr.coast(2, FRAME)
    assert shown == [t] and t.time_since_update == 0 and t in tr.active_tracks
    np.testing.assert_allclose(t.box, walk(2))      # predicted where the person is
    tr.coast(3, FRAME)
    assert tr.frame_index == 3 and t.age == 4 and t.hits == 2
    # the person sped up to 7 px per frame over frames 2..4: (x4 - x1) / 3 frames
    x4 = [100 + 4 * 1 + 7 * 3, 100, 100 + 4 * 1 + 7 * 3 + 40, 200]
    tr.update(np.array([x4], np.float32), np.array([0.9], np.float32), 4, FRAME)
    assert tr.tracks == [t] and t.hits == 3 and t.frames_since_measured == 0
    np.testing.assert_allclose(t.velocity, [7, 0, 7, 0], atol=1e-5)
    # coasting never ends a track, however long; a missed detector frame does, as before
    for f in range(5, 100):
        tr.coast(f)
    assert tr.tracks == [t] and t.time_since_update == 0 and tr.tracks_removed == 0


def test_unconfirmed_track_dies_on_first_miss():
    tr = Tracker(min_hits=3)
    tr.update(np.array([person(0, 0)], np.float32), np.array([0.9], np.float32), 0)
    assert len(tr.tracks) == 1 and not tr.tracks[0].confirmed
    tr.update(np.zeros((0, 4)), np.zeros(0), 1)
    assert tr.tracks == []


def test_low_score_detections_continue_but_never_start_tracks():
    tr = Tracker(min_hits=1, high_score=0.5, low_score=0.1)
    tr.update(np.array([person(100, 100)], np.float32), np.array([0.9], np.float32), 0)
    tid = tr.tracks[0].track_id
    # occluded: low score but same place -> continues the track
    tracks = tr.update(np.array([person(102, 100), person(400, 100)], np.float32),
                       np.array([0.3, 0.3], np.float32), 1)
    assert [t.track_id for t in tracks] == [tid]
    assert len(tr.tracks) == 1  # the lone low-score box started nothing
    # below low_score: ignored entirely
    assert tr.update(np.array([person(104, 100)], np.float32), np.array([0.05], np.float32), 2) == []


def test_embedding_schedule_triggers():
    rng = np.random.default_rng(0)
    tr = Tracker(min_hits=2, schedule=EmbeddingSchedule(every_n=5, area_growth=0.3, keep_last=3))
    reasons = []

    def step(f, box):
        tr.update(np.array([box], np.float32), np.array([0.9], np.float32), f, FRAME)
        due = tr.tracks_to_embed()
        reasons.append((f, [tr.schedule.reason(t, f, FRAME) for t in due]))
        tr.record_embeddings(due, np.stack([unit(rng) for _ in due]) if due else np.zeros((0, 16)), "visible")
        return due

    assert step(0, person(20, 100)) == []              # tentative: not embedded yet
    assert len(step(1, person(22, 100))) == 1          # confirmed -> 'new'
    assert step(2, person(26, 100)) == []
    assert step(3, person(28, 100)) == []
    assert len(step(6, person(34, 100))) == 1          # 5 frames since the last one -> 'periodic'
    assert step(7, person(36, 100)) == []
    assert len(step(8, person(38, 100, 60, 130))) == 1  # area grew 95 % -> 'larger'
    got = dict(reasons)
    assert got[1] == ["new"] and got[6] == ["periodic"] and got[8] == ["larger"]
    t = tr.tracks[0]
    assert t.embeddings_computed == 3 == tr.embeddings_computed
    assert len(t.embeddings) == 3 and t.modality == "visible"
    mean = t.mean_embedding()
    assert mean.shape == (16,) and np.linalg.norm(mean) == pytest.approx(1.0, abs=1e-5)
    expected = np.mean(np.stack(t.embeddings), axis=0)
    np.testing.assert_allclose(mean, expected / np.linalg.norm(expected), rtol=1e-5)


def test_embedding_when_crop_leaves_the_border():
    tr = Tracker(min_hits=1, schedule=EmbeddingSchedule(every_n=100))
    tr.update(np.array([person(0, 100)], np.float32), np.array([0.9], np.float32), 0, FRAME)
    due = tr.tracks_to_embed()
    assert len(due) == 1 and touches_border(due[0].box, FRAME)
    tr.record_embeddings(due, np.ones((1, 8)))
    tr.update(np.array([person(1, 100)], np.float32), np.array([0.9], np.float32), 1, FRAME)
    assert tr.tracks_to_embed() == []  # still clipped
    tr.update(np.array([person(10, 100)], np.float32), np.array([0.9], np.float32), 2, FRAME)
    assert [tr.schedule.reason(t, 2, FRAME) for t in tr.tracks_to_embed()] == ["unclipped"]
    # zero embeddings (empty crops) are counted but not averaged in
    t = tr.tracks[0]
    tr.record_embeddings([t], np.zeros((1, 8)))
    assert t.embeddings_computed == 2 and len(t.embeddings) == 1


def test_crop_is_clipped_and_may_be_empty():
    frame = np.zeros((50, 60, 3), np.uint8)
    assert crop(frame, np.array([-5, -5, 10, 20])).shape == (20, 10, 3)
    assert crop(frame, np.array([70, 10, 80, 20])).size == 0


def test_tracker_on_hog_detections_of_vtest():
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} absent (the OpenCV sample clip; apt-get install opencv-doc or set ADMPFF_VTEST)")
    cap = cv2.VideoCapture(str(VTEST))
    det = HOGPersonDetector()
    tr = Tracker(high_score=0.5, low_score=0.0, min_hits=2, max_age=5)
    for f in range(12):
        ok, frame = cap.read()
        assert ok
        boxes, scores = det.detect(frame)
        tr.update(boxes, scores, f, frame.shape)
    cap.release()
    # walking people at 10 fps: HOG misses some frames, but at least one person is followed throughout most
    assert max(t.hits for t in tr.tracks) >= 6
