"""Video sources: spec parsing, kinds, clear errors, file iteration, and reconnecting live sources."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from admpff.runtime.sources import (FrameSource, SourceError, SourceSpec, gstreamer_available, jetson_csi_pipeline,
                                    open_source, parse_source_spec, redact, source_kind)

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path(os.environ.get("ADMPFF_VTEST", ROOT.parent / "shared" / "data" / "vtest.avi"))
needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} absent (the OpenCV sample clip; "
                                 "apt-get install opencv-doc or set ADMPFF_VTEST)")


def test_parse_source_spec():
    assert parse_source_spec("cam1=rtsp://10.0.0.5/stream") == SourceSpec("cam1", "rtsp://10.0.0.5/stream")
    # '=' inside a URL or a pipeline is not a name separator
    assert parse_source_spec("rtsp://h/s?channel=1").uri == "rtsp://h/s?channel=1"
    pipe = jetson_csi_pipeline(sensor_id=1)
    assert parse_source_spec(pipe).uri == pipe
    assert parse_source_spec(f"door={pipe}") == SourceSpec("door", pipe)
    assert parse_source_spec("/videos/lobby.mp4") == SourceSpec("lobby", "/videos/lobby.mp4")
    assert parse_source_spec("0").name == "usb0" and parse_source_spec("/dev/video2").name == "usb2"
    assert parse_source_spec("x.avi", default_name="cam3").name == "cam3"
    with pytest.raises(SourceError):
        parse_source_spec("  ")


def test_source_kinds_and_pipeline():
    assert source_kind("rtsp://cam/1") == "stream" and source_kind("http://cam/mjpg") == "stream"
    assert source_kind("0") == "usb" and source_kind("/dev/video0") == "usb"
    assert source_kind("videotestsrc ! appsink") == "gstreamer"
    assert source_kind("clip.avi") == "file"
    pipe = jetson_csi_pipeline(0, 1280, 720, 30, output_width=960, output_height=540)
    assert pipe.startswith("nvarguscamerasrc sensor-id=0 ! ")
    assert "nvvidconv" in pipe and "format=(string)BGRx" in pipe and pipe.endswith("appsink drop=true max-buffers=1")
    assert "width=(int)960" in pipe and "framerate=(fraction)30/1" in pipe
    assert redact("rtsp://admin:s3cret@10.0.0.5/h264") == "rtsp://admin:***@10.0.0.5/h264"


def _one_line_error(uri):
    with pytest.raises(SourceError) as exc:
        open_source(uri)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("cannot open")
    return msg


def test_unopenable_sources_raise_one_line_errors(tmp_path):
    assert "no such file" in _one_line_error(str(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\x00" * 1000)
    assert "decode" in _one_line_error(str(junk))
    assert "no such device" in _one_line_error("/dev/video97")
    if not gstreamer_available():
        assert "no GStreamer support" in _one_line_error("videotestsrc ! appsink")
    msg = _one_line_error(f"cam9={tmp_path / 'gone.avi'}")
    assert "gone.avi" in msg


@needs_vtest
def test_video_file_yields_every_frame_then_ends():
    src = open_source(f"courtyard={VTEST}")
    assert src.name == "courtyard" and not src.live and src.size == (768, 576) and src.fps == pytest.approx(10)
    count, last = 0, None
    for index, ts, frame in src:
        assert index == count and frame.shape == (576, 768, 3)
        count, last = count + 1, ts
    assert count == 795 and src.frame_count == 795
    assert last == pytest.approx(794 / 10)


@needs_vtest
def test_stride_and_max_frames():
    frames = list(open_source(str(VTEST), stride=5, max_frames=4))
    assert [f.index for f in frames] == [4, 9, 14, 19]
    assert frames[1].timestamp == pytest.approx(0.9)


class FakeCapture:
    """A camera that delivers `frames` reads, then fails (drops)."""

    def __init__(self, frames: int):
        self.left = frames
        self.released = False

    def isOpened(self):
        return not self.released

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def grab(self):
        return self.read()[0]

    def get(self, prop):
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        self.released = True


def test_live_source_reconnects_with_backoff_without_raising():
    opens = []
    plan = iter([3, "fail", "fail", 2, "fail"])  # 3 frames, drop, 2 failed reopens, 2 frames, ...

    def factory(uri):
        step = next(plan, "fail")
        opens.append(step)
        if step == "fail":
            raise SourceError("cannot open stream source: unreachable")
        return FakeCapture(step)

    sleeps = []
    src = FrameSource("rtsp://cam/1", capture_factory=factory, sleep=sleeps.append, max_reconnects=4,
                      backoff_initial=0.5, backoff_max=1.5)
    frames = list(src)  # ends quietly once reconnects are exhausted
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert src.reconnects == 1 and src.failed_reads == 2
    # first drop: wait 0.5, 1.0, 1.5 (capped) before the 3rd attempt succeeds; second drop: 4 attempts
    assert sleeps[:3] == [0.5, 1.0, 1.5] and sleeps[3:] == [0.5, 1.0, 1.5, 1.5]


def test_first_open_failure_of_a_live_source_raises():
    def factory(uri):
        raise SourceError("cannot open stream source rtsp://cam/1: unreachable")

    with pytest.raises(SourceError, match="unreachable"):
        FrameSource("rtsp://cam/1", capture_factory=factory)


def test_file_source_does_not_reconnect():
    src = FrameSource("clip.avi", capture_factory=lambda uri: FakeCapture(2), sleep=lambda s: pytest.fail("slept"))
    assert len(list(src)) == 2 and src.reconnects == 0
