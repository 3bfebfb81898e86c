"""Video sources: files, RTSP/HTTP streams, USB cameras and GStreamer pipelines (Jetson CSI cameras).

``open_source(uri)`` opens a source and returns a :class:`FrameSource`, an iterator of
``SourceFrame(index, timestamp, frame)``.  A source that cannot be opened at all raises
:class:`SourceError` with a one-line reason.  Once running, a *live* source (stream, camera, pipeline)
that drops is reopened with exponential backoff without raising to the caller, because cameras on a
site network do drop; a *file* simply ends.

Source specs on the command line are ``NAME=URI`` (``cam1=rtsp://10.0.0.5/stream``) or a bare URI.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["SourceError", "SourceSpec", "SourceFrame", "FrameSource", "open_source", "open_capture",
           "parse_source_spec", "source_kind", "jetson_csi_pipeline", "gstreamer_available", "redact"]

FILE, STREAM, USB, GSTREAMER = "file", "stream", "usb", "gstreamer"
_STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class SourceError(RuntimeError):
    """A video source that cannot be opened."""


class SourceFrame(NamedTuple):
    index: int          # 0-based frame number from the source (counts skipped frames too)
    timestamp: float    # seconds: position in the file, or wall-clock time for live sources
    frame: np.ndarray   # BGR uint8


@dataclass(frozen=True)
class SourceSpec:
    name: str
    uri: str


def redact(uri: str) -> str:
    """Hide the password of ``rtsp://user:password@host`` in messages and logs."""
    return re.sub(r"(://[^:/@\s]+:)[^@/\s]+@", r"\1***@", str(uri))


def parse_source_spec(spec: str, default_name: str | None = None) -> SourceSpec:
    """``'cam1=rtsp://host/s'`` -> SourceSpec('cam1', 'rtsp://host/s'); a bare URI gets ``default_name``
    (or a name derived from it).  Only a plain identifier before the first ``=`` counts as a name, so
    URLs with query strings and GStreamer pipelines with ``key=value`` properties pass through whole."""
    spec = str(spec).strip()
    if not spec:
        raise SourceError("empty source spec")
    name, sep, rest = spec.partition("=")
    if sep and rest.strip() and _NAME_RE.match(name.strip()) and not name.strip().isdigit():
        return SourceSpec(name.strip(), rest.strip())
    if default_name is None:
        kind = source_kind(spec)
        if kind == FILE:
            default_name = Path(spec).stem or "video"
        elif kind == USB:
            default_name = f"usb{_usb_index(spec)}"
        else:
            default_name = "cam"
    return SourceSpec(default_name, spec)


def _usb_index(uri: str) -> int | str:
    m = re.fullmatch(r"(?:/dev/video)?(\d+)", uri.strip())
    return int(m.group(1)) if m else uri


def source_kind(uri: str) -> str:
    """'gstreamer' (contains '!'), 'stream' (URL scheme), 'usb' ('0', '/dev/video0') or 'file'."""
    text = str(uri).strip()
    if "!" in text:
        return GSTREAMER
    if text.lower().startswith(_STREAM_SCHEMES):
        return STREAM
    if re.fullmatch(r"\d+|/dev/video\d+", text):
        return USB
    return FILE


def gstreamer_available() -> bool:
    """Whether this OpenCV build can run GStreamer pipelines (pip wheels cannot; JetPack's can)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.upper()
    return False


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, fps: int = 30,
                        flip_method: int = 0, output_width: int | None = None,
                        output_height: int | None = None) -> str:
    """GStreamer pipeline for a Jetson CSI camera (``nvarguscamerasrc``) ending in BGR frames for OpenCV.

    ``nvvidconv`` does the scaling and NV12->BGRx conversion on the VIC; ``videoconvert`` only drops
    the X channel.  ``drop=true max-buffers=1`` keeps the latest frame when processing is slower than
    the camera, instead of building up latency.
    """
    ow, oh = output_width or width, output_height or height
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
            f"format=(string)NV12, framerate=(fraction){fps}/1 ! "
            f"nvvidconv flip-method={flip_method} ! "
            f"video/x-raw, width=(int){ow}, height=(int){oh}, format=(string)BGRx ! "
            f"videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1")


def open_capture(uri: str, open_timeout_ms: int = 10000, read_timeout_ms: int = 10000) -> cv2.VideoCapture:
    """Open one ``cv2.VideoCapture`` for ``uri`` or raise :class:`SourceError` saying why."""
    kind = source_kind(uri)
    shown = redact(uri)
    if kind == FILE:
        if not os.path.exists(uri):
            raise SourceError(f"cannot open video file {shown}: no such file")
        cap = cv2.VideoCapture(str(uri))
        why = "not a video OpenCV can decode (or a corrupt file)"
    elif kind == USB:
        index = _usb_index(uri)
        if str(uri).startswith("/dev/") and not os.path.exists(uri):
            raise SourceError(f"cannot open camera {shown}: no such device")
        cap = cv2.VideoCapture(index)
        why = "no such camera, or it is busy"
    elif kind == GSTREAMER:
        if not gstreamer_available():
            raise SourceError("cannot open GStreamer pipeline: this OpenCV build has no GStreamer support "
                              "(pip's opencv-python has none; use JetPack's system OpenCV)")
        cap = cv2.VideoCapture(uri, cv2.CAP_GSTREAMER)
        why = "the pipeline failed to start (check it with gst-launch-1.0)"
    else:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_ms),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_ms)]
        try:
            cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        except cv2.error:
            cap = cv2.VideoCapture(uri)
        why = "unreachable, wrong URL or credentials, or a codec this OpenCV lacks"
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open {kind} source {shown}: {why}")
    return cap


class FrameSource:
    """Iterate over ``SourceFrame(index, timestamp, frame)`` of one source.

    Live sources (stream, usb, gstreamer) are reopened after a failed read, waiting
    ``backoff_initial`` seconds and doubling up to ``backoff_max``; ``max_reconnects`` (None: forever)
    ends the iteration quietly once exhausted.  Files end at their last frame.  ``stride`` > 1 keeps
    every stride-th frame (the others are grabbed, not decoded).
    """

    def __init__(self, uri: str, name: str | None = None, *, stride: int = 1, max_frames: int | None = None,
                 live: bool | None = None, max_reconnects: int | None = None, backoff_initial: float = 0.5,
                 backoff_max: float = 10.0, capture_factory: Callable[[str], cv2.VideoCapture] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.uri = str(uri)
        self.kind = source_kind(self.uri)
        self.name = name or parse_source_spec(self.uri).name
        self.live = (self.kind != FILE) if live is None else bool(live)
        self.stride = max(1, int(stride))
        self.max_frames = max_frames
        self.max_reconnects = max_reconnects
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self._factory = capture_factory or open_capture
        self._sleep = sleep
        self.reconnects = 0       # successful reopenings
        self.failed_reads = 0
        self.frames_read = 0
        self._stopped = False
        self.cap = self._factory(self.uri)  # raises SourceError: a source that never opens is an error
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not self.live else 0
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0))

    def _reconnect(self) -> bool:
        """Reopen a dropped live source; False once ``max_reconnects`` is exhausted or stopped."""
        attempts = 0
        delay = self.backoff_initial
        self.cap.release()
        while not self._stopped:
            if self.max_reconnects is not None and attempts >= self.max_reconnects:
                log.error("source %s: giving up after %d reconnect attempts", self.name, attempts)
                return False
            attempts += 1
            self._sleep(delay)
            try:
                self.cap = self._factory(self.uri)
            except SourceError as exc:
                log.warning("source %s: reconnect %d failed (%s); retrying in %.1fs", self.name,
                            attempts, exc, min(delay * 2, self.backoff_max))
                delay = min(delay * 2, self.backoff_max)
                continue
            self.reconnects += 1
            log.info("source %s: reconnected after %d attempt(s)", self.name, attempts)
            return True
        return False

    def __iter__(self) -> Iterator[SourceFrame]:
        index = -1
        emitted = 0
        t0 = time.time()
        while not self._stopped:
            if self.max_frames is not None and emitted >= self.max_frames:
                break
            # skip stride-1 frames cheaply with grab() (no decode)
            ok = True
            for _ in range(self.stride - 1):
                ok = self.cap.grab()
                if not ok:
                    break
                index += 1
            frame = None
            if ok:
                ok, frame = self.cap.read()
            if not ok or frame is None:
                self.failed_reads += 1
                if not self.live or not self._reconnect():
                    break
                continue
            index += 1
            self.frames_read += 1
            # files: position from the frame number (CAP_PROP_POS_MSEC is unreliable across backends)
            if self.live:
                ts = time.time()
            else:
                ts = index / self.fps if self.fps > 0 else time.time() - t0
            emitted += 1
            yield SourceFrame(index, ts, frame)
        self.close()

    def stop(self) -> None:
        """Ask a running iteration (e.g. from another thread) to end after the current frame."""
        self._stopped = True

    def close(self) -> None:
        try:
            self.cap.release()
        except Exception:  # noqa: BLE001 - releasing a broken capture must never raise
            pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.close()

    def __repr__(self) -> str:
        return f"FrameSource({self.name}: {self.kind} {redact(self.uri)})"


def open_source(uri: str | SourceSpec, **options) -> FrameSource:
    """Open ``uri`` (or a ``NAME=URI`` spec / SourceSpec); raises :class:`SourceError` if it cannot."""
    spec = uri if isinstance(uri, SourceSpec) else parse_source_spec(str(uri))
    options.setdefault("name", spec.name)
    return FrameSource(spec.uri, **options)
