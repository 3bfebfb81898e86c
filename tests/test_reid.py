"""admpff-reid end to end on the real clip: HOG crops -> embedder -> tracker -> registry -> files."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from _tiny_model import build_tiny_embedder
from admpff.runtime import reid
from admpff.runtime.detectors import HOGPersonDetector
from admpff.runtime.embedder import load_embedder
from admpff.runtime.tracker import crop

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vtest.avi"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason=f"real clip not found at {CLIP} (apt-get install opencv-doc)")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_embedder(tmp_path_factory.mktemp("m") / "tiny.onnx", checkpoint_sha256="reid-test")


@needs_clip
def test_real_clip_crops_through_hog_into_embedder(model):
    cap = cv2.VideoCapture(str(CLIP))
    det, emb = HOGPersonDetector(), load_embedder(model)
    crops = []
    for _ in range(12):
        ok, frame = cap.read()
        assert ok
        boxes, _ = det.detect(frame)
        crops += [crop(frame, b) for b in boxes]
    assert len(crops) >= 10, "HOG should find people in the courtyard clip"
    out = emb.embed(crops, "visible")
    assert out.shape == (len(crops), 5120) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


@needs_clip
def test_cli_writes_valid_events_video_and_summary(model, tmp_path):
    out = tmp_path / "run"
    rc = reid.main(["--model", str(model), "--source", f"lobby={CLIP}", "--out", str(out), "--max-frames", "25",
                    "--quiet"])
    assert rc == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events, "people are tracked in the first 25 frames"
    for e in events:
        assert set(e) >= {"time", "camera", "box", "identity", "score", "frame", "track"}
        assert e["camera"] == "lobby" and len(e["box"]) == 4 and isinstance(e["identity"], str)
        x1, y1, x2, y2 = e["box"]
        assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 576
    # one track keeps one identity from frame to frame (the registry's stickiness)
    by_track = {}
    for e in events:
        by_track.setdefault(e["track"], set()).add(e["identity"])
    assert max(len(v) for v in by_track.values()) <= 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 25 and summary["cameras"]["lobby"]["frames"] == 25
    assert summary["embeddings"] > 0 and set(summary["stage_ms_per_frame"]) == set(reid.STAGES)
    cap = cv2.VideoCapture(str(out / "lobby.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 25


@needs_clip
def test_detect_every_runs_the_detector_on_every_nth_frame_and_still_reports_every_frame(model, tmp_path):
    out = tmp_path / "every3"
    rc = reid.main(["--model", str(model), "--source", f"lobby={CLIP}", "--out", str(out), "--max-frames", "30",
                    "--detect-every", "3", "--hog-scale", "1.1", "--no-video", "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    cam = summary["cameras"]["lobby"]
    assert cam["frames"] == 30 and cam["detect_every"] == 3 and cam["detected_frames"] == 10
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    frames_with_events = {e["frame"] for e in events}
    coasted = {f for f in frames_with_events if f % 3 != 0}
    assert coasted, "tracks are reported on the frames the detector skipped"
    by_track = {}
    for e in events:
        by_track.setdefault(e["track"], []).append((e["frame"], e["box"]))
    longest = max(by_track.values(), key=len)
    assert len({f for f, _ in longest}) == len(longest), "one event per track and frame"


def test_summary_hints_at_detect_every_only_when_detection_holds_a_camera_back():
    def summary(fps, detect_ms, embed_ms=30.0, source_fps=10.0, every=1):
        ms = {k: 1.0 for k in reid.STAGES} | {"detect": detect_ms, "embed": embed_ms}
        return {"frames": 100, "seconds": 100 / fps, "fps_end_to_end": fps, "embeddings": 10, "embeddings_per_s": 1.0,
                "embed_ms_per_crop": 50.0, "identities": {}, "peak_rss_mb": 300.0, "detect_ms_per_call": detect_ms * every,
                "stage_ms_per_frame": ms, "stage_fps": {k: 1000 / v for k, v in ms.items()},
                "cameras": {"lobby": {"source_fps": source_fps, "detect_every": every}}}
    slow = reid.format_summary(summary(7.8, 125.0))
    assert "hint:" in slow and "--detect-every 2" in slow
    assert "--detect-every 3" in reid.format_summary(summary(7.0, 70.0, every=2))
    assert "hint:" not in reid.format_summary(summary(14.6, 64.0))               # keeps up
    assert "hint:" not in reid.format_summary(summary(5.0, 40.0, embed_ms=150.0))  # embedding is the slow stage
    assert "hint:" not in reid.format_summary(summary(5.0, 125.0, source_fps=None))  # live source of unknown rate


def test_detect_every_and_hog_scale_are_checked(model):
    for flags, words in ((["--detect-every", "0"], "--detect-every must be >= 1"),
                         (["--detector", "hog", "--hog-scale", "1.0"], "--hog-scale must be above 1.0"),
                         (["--hog-scale", "1.0"], "--hog-scale must be above 1.0")):  # auto detector too
        p = subprocess.run([sys.executable, "-m", "admpff.runtime.reid", "--model", str(model), "--source",
                            "x=missing.avi", *flags], capture_output=True, text=True)
        assert p.returncode == 2 and words in p.stderr and p.stderr.strip().count("\n") == 0, p.stderr


@needs_clip
def test_two_cameras_share_identities(model, tmp_path):
    """The same footage on two cameras: the same people get the same ids on both."""
    out = tmp_path / "two"
    rc = reid.main(["--model", str(model), "--source", f"a={CLIP}", "--source", f"b={CLIP}", "--out", str(out),
                    "--max-frames", "15", "--quiet", "--no-video"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["identities_on_several_cameras"], summary["identities"]


def test_source_that_cannot_be_opened_is_one_line_exit_2(model, tmp_path):
    p = subprocess.run([sys.executable, "-m", "admpff.runtime.reid", "--model", str(model), "--source",
                        f"x={tmp_path / 'missing.avi'}"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "admpff-reid: error:" in p.stderr


def test_wrong_model_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    p = subprocess.run([sys.executable, "-m", "admpff.runtime.reid", "--model", str(bad), "--source", "x=0"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("admpff-reid: error: cannot load bad.onnx")


def test_enroll_then_match_known_person(model, tmp_path):
    people = tmp_path / "people"
    rng = np.random.default_rng(0)
    for name in ("alice", "bob"):
        (people / name).mkdir(parents=True)
        base = rng.integers(0, 255, (160, 64, 3), dtype=np.uint8)
        for i in range(2):
            cv2.imwrite(str(people / name / f"{i}.png"), base)
    gallery = tmp_path / "g.npz"
    assert reid.main(["--model", str(model), "--gallery", str(gallery), "--enroll", str(people)]) == 0
    from admpff.runtime.gallery import Gallery
    g = Gallery.load_for(gallery, load_embedder(model))
    assert sorted(g.persons) == ["alice", "bob"]


def test_runtime_never_imports_torch():
    code = ("import sys; import admpff.runtime.reid, admpff.runtime.embedder, admpff.runtime.gallery; "
            "import admpff.runtime.tracker, admpff.runtime.detectors, admpff.runtime.sources; "
            "assert 'torch' not in sys.modules, 'runtime pulled in torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_clip
def test_ctrl_c_leaves_complete_files(model, tmp_path):
    import signal
    import time

    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "admpff.runtime.reid", "--model", str(model), "--source",
                             f"lobby={CLIP}", "--out", str(out), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not ((out / "events.jsonl").exists() and (out / "events.jsonl").stat().st_size > 2000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    for line in (out / "events.jsonl").read_text().splitlines():
        json.loads(line)  # every line complete
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and 0 < summary["frames"] < 795
    cap = cv2.VideoCapture(str(out / "lobby.avi"))
    ok, frame = cap.read()
    assert ok and frame.shape == (576, 768, 3)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames"]


def test_annotated_video_uses_the_first_codec_opencv_can_write(tmp_path, monkeypatch):
    frame = np.full((64, 48, 3), 90, np.uint8)
    writer = reid.open_video_writer(tmp_path / "a.avi", 10.0, (48, 64))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    cap = cv2.VideoCapture(str(tmp_path / "a.avi"))
    assert int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode() in ("XVID", "FMP4", "MJPG")
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    monkeypatch.setattr(reid, "VIDEO_CODECS", ("ZZZZ", "MJPG"))  # an unknown codec falls through to the next
    writer = reid.open_video_writer(tmp_path / "b.avi", 10.0, (48, 64))
    assert writer.isOpened()
    writer.release()
    monkeypatch.setattr(reid, "VIDEO_CODECS", ("ZZZZ",))
    with pytest.raises(ValueError, match="--no-video"):
        reid.open_video_writer(tmp_path / "c.avi", 10.0, (48, 64))
