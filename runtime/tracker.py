"""A light per-camera tracker (IoU association, ByteTrack-style) with an embedding schedule.

Why not a Kalman filter: at 10-30 fps pedestrians move a few pixels per frame, so IoU with a
constant-velocity shift (an exponential average of the box's last displacements) associates them as
well as SORT does on a Jetson CPU budget.  ByteTrack's idea is kept: detections above
``high_score`` are associated first; low-score ones (partly occluded people) may only *continue*
tracks that the first stage left unmatched, never start new ones.

Re-ID embeddings cost far more than tracking, so a track is embedded only when worth it (see
:class:`EmbeddingSchedule`): when it is confirmed, then every ``every_n`` frames, or earlier when its
crop got clearly better (larger, or no longer cut by the frame border).
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["Track", "Tracker", "TrackerConfig", "EmbeddingSchedule", "iou_matrix", "box_area",
           "touches_border", "crop"]


def box_area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x1,y1,x2,y2 boxes: ``[len(a), len(b)]`` float32."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def touches_border(box: np.ndarray, frame_shape: tuple[int, ...] | None, margin: float = 2.0) -> bool:
    """Whether a box is cut by the frame edge (its crop then misses part of the person)."""
    if frame_shape is None:
        return False
    h, w = frame_shape[:2]
    return bool(box[0] <= margin or box[1] <= margin or box[2] >= w - margin or box[3] >= h - margin)


@dataclass
class EmbeddingSchedule:
    """When a track's crop is worth embedding.

    - on confirmation (the track's first embedding),
    - every ``every_n`` frames after the last embedding,
    - or sooner when the box area grew by more than ``area_growth`` (e.g. 0.3 = 30 %) since the
      last embedded crop, or the last embedded crop touched the frame border and this one does not.
    ``keep_last`` embeddings are kept per track for its mean.
    """

    every_n: int = 10
    area_growth: float = 0.3
    keep_last: int = 8
    border_margin: float = 2.0
    embed_tentative: bool = False  # also embed tracks not yet confirmed (costs more on false detections)

    def reason(self, track: "Track", frame_index: int, frame_shape: tuple[int, ...] | None) -> str | None:
        """Why ``track`` should be embedded now (``'new'``, ``'periodic'``, ``'larger'``,
        ``'unclipped'``), or None."""
        if track.time_since_update != 0:
            return None  # no fresh detection: the predicted box is not a crop of the person
        if track.embed_pending:
            return None  # a crop of it is still being embedded (asynchronous embedding)
        if not track.confirmed and not self.embed_tentative:
            return None
        if track.last_embed_frame is None:
            return "new"
        if frame_index - track.last_embed_frame >= self.every_n:
            return "periodic"
        if box_area(track.box) > track.last_embed_area * (1.0 + self.area_growth):
            return "larger"
        if track.last_embed_touched_border and not touches_border(track.box, frame_shape, self.border_margin):
            return "unclipped"
        return None


@dataclass
class TrackerConfig:
    """Association parameters.  Score thresholds depend on the detector's score scale: the defaults
    suit probabilities (YOLO); for HOG margins use e.g. ``high_score=0.5, low_score=0.0``."""

    high_score: float = 0.5      # first-stage detections; also the minimum score to start a track
    low_score: float = 0.1       # detections between low and high only continue tracks
    new_track_score: float | None = None  # default: high_score
    match_iou: float = 0.25      # first stage: minimum IoU between predicted track box and detection
    low_match_iou: float = 0.5   # second stage (low-score dets) is stricter, as in ByteTrack
    max_age: int = 30            # frames a lost track survives without a detection
    min_hits: int = 2            # detections before a track is confirmed (gets an id shown / embedded)
    velocity_smoothing: float = 0.5  # weight of the newest displacement in the velocity average


@dataclass
class Track:
    """One tracked person on one camera."""

    track_id: int
    box: np.ndarray               # x1,y1,x2,y2 float32 of the last detection (or prediction while lost)
    score: float
    start_frame: int
    keep_last: int = 8
    age: int = 1                  # frames since the track started (inclusive)
    hits: int = 1                 # frames with a matched detection
    time_since_update: int = 0    # detector frames since the last matched detection
    frames_since_measured: int = 0  # all frames (detector or coasted) since the last matched detection
    confirmed: bool = False
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))
    identity: str | None = None   # set by the cross-camera IdentityRegistry
    identity_score: float | None = None
    modality: str | None = None   # modality of the crops embedded most recently
    last_embed_frame: int | None = None
    last_embed_area: float = 0.0
    last_embed_touched_border: bool = False
    embed_pending: bool = False   # a crop was handed to the embedder and its row is not back yet
    embeddings_computed: int = 0
    embeddings: deque = field(init=False)

    def __post_init__(self):
        self.box = np.asarray(self.box, np.float32).copy()
        self.embeddings = deque(maxlen=self.keep_last)

    # -- motion ------------------------------------------------------------------------------------
    def predicted_box(self) -> np.ndarray:
        return self.box + self.velocity

    def _predict(self) -> None:
        """A frame the detector ran on: the track is missed until a detection matches it."""
        self.box = self.predicted_box()
        self.age += 1
        self.time_since_update += 1
        self.frames_since_measured += 1

    def _coast(self) -> None:
        """A frame the detector skipped: move with the velocity; nothing was looked for, so nothing
        was missed (``time_since_update`` stays)."""
        self.box = self.predicted_box()
        self.age += 1
        self.frames_since_measured += 1

    def _update(self, box: np.ndarray, score: float, smoothing: float, min_hits: int) -> None:
        box = np.asarray(box, np.float32)
        # `self.box` already holds the prediction; the correction is relative to the last measurement
        steps = self.frames_since_measured
        if steps >= 1:
            measured = (box - (self.box - self.velocity * steps)) / steps
            self.velocity = (1 - smoothing) * self.velocity + smoothing * measured
        self.box = box.copy()
        self.score = float(score)
        self.hits += 1
        self.time_since_update = 0
        self.frames_since_measured = 0
        if self.hits >= min_hits:
            self.confirmed = True

    # -- embeddings --------------------------------------------------------------------------------
    def add_embedding(self, embedding: np.ndarray, frame_index: int, frame_shape: tuple[int, ...] | None = None,
                      modality: str | None = None, border_margin: float = 2.0,
                      box: np.ndarray | None = None) -> None:
        """Record an embedding computed from this track's crop at ``box`` (default: its current box)."""
        emb = np.asarray(embedding, np.float32).reshape(-1)
        box = self.box if box is None else np.asarray(box, np.float32)
        self.embeddings_computed += 1
        self.embed_pending = False
        self.last_embed_frame = int(frame_index)
        self.last_embed_area = box_area(box)
        self.last_embed_touched_border = touches_border(box, frame_shape, border_margin)
        if modality is not None:
            self.modality = modality
        if np.linalg.norm(emb) > 1e-6:  # zero rows come from empty crops: nothing to learn from them
            self.embeddings.append(emb)

    def mean_embedding(self) -> np.ndarray | None:
        """L2-normalised mean of the kept embeddings (None before the first one)."""
        if not self.embeddings:
            return None
        mean = np.mean(np.stack(self.embeddings), axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 1e-12 else None

    @property
    def tlwh(self) -> np.ndarray:
        return np.array([self.box[0], self.box[1], self.box[2] - self.box[0], self.box[3] - self.box[1]], np.float32)


class Tracker:
    """Per-camera multi-person tracker.  Call :meth:`update` once per processed frame."""

    def __init__(self, config: TrackerConfig | None = None, schedule: EmbeddingSchedule | None = None,
                 **overrides):
        config = config or TrackerConfig()
        if overrides:
            config = TrackerConfig(**{**config.__dict__, **overrides})
        self.config = config
        self.schedule = schedule or EmbeddingSchedule()
        self.tracks: list[Track] = []
        self.frame_index = -1
        self._ids = itertools.count(1)
        self.embeddings_computed = 0   # all embeddings recorded through record_embeddings()
        self.tracks_started = 0
        self.tracks_removed = 0
        self.frame_shape: tuple[int, ...] | None = None

    # -- association -------------------------------------------------------------------------------
    @staticmethod
    def _associate(tracks: list[Track], boxes: np.ndarray, min_iou: float):
        """Hungarian assignment on IoU; pairs below ``min_iou`` are not matches."""
        if not tracks or len(boxes) == 0:
            return [], list(range(len(tracks))), list(range(len(boxes)))
        pred = np.stack([t.box for t in tracks])  # tracks were already predicted this frame
        iou = iou_matrix(pred, boxes)
        rows, cols = linear_sum_assignment(-iou)
        matches = [(r, c) for r, c in zip(rows, cols) if iou[r, c] >= min_iou]
        matched_r = {r for r, _ in matches}
        matched_c = {c for _, c in matches}
        return (matches, [r for r in range(len(tracks)) if r not in matched_r],
                [c for c in range(len(boxes)) if c not in matched_c])

    def update(self, boxes: np.ndarray, scores: np.ndarray, frame_index: int | None = None,
               frame_shape: tuple[int, ...] | None = None) -> list[Track]:
        """Advance one frame with its detections; return the tracks seen in this frame
        (``time_since_update == 0``), confirmed or not — filter on ``track.confirmed`` to display."""
        cfg = self.config
        self.frame_index = self.frame_index + 1 if frame_index is None else int(frame_index)
        if frame_shape is not None:
            self.frame_shape = tuple(frame_shape)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")

        for t in self.tracks:
            t._predict()

        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))

        # stage 1: all tracks (confirmed first would be ByteTrack's order; IoU already separates them)
        matches, left_tracks, left_high = self._associate(self.tracks, boxes[high], cfg.match_iou)
        for r, c in matches:
            self.tracks[r]._update(boxes[high[c]], scores[high[c]], cfg.velocity_smoothing, cfg.min_hits)

        # stage 2: low-score detections may continue tracks that were left over
        remaining = [self.tracks[i] for i in left_tracks]
        matches2, _, _ = self._associate(remaining, boxes[low], cfg.low_match_iou)
        for r, c in matches2:
            remaining[r]._update(boxes[low[c]], scores[low[c]], cfg.velocity_smoothing, cfg.min_hits)

        # new tracks from unmatched high-score detections
        start_score = cfg.high_score if cfg.new_track_score is None else cfg.new_track_score
        for c in left_high:
            j = high[c]
            if scores[j] < start_score:
                continue
            track = Track(next(self._ids), boxes[j], float(scores[j]), self.frame_index,
                          keep_last=self.schedule.keep_last)
            track.confirmed = cfg.min_hits <= 1
            self.tracks.append(track)
            self.tracks_started += 1

        # drop lost tracks; unconfirmed tracks die on their first miss (they were probably false)
        alive = []
        for t in self.tracks:
            if t.time_since_update > cfg.max_age or (not t.confirmed and t.time_since_update > 0):
                self.tracks_removed += 1
            else:
                alive.append(t)
        self.tracks = alive
        return self._seen()

    def _seen(self) -> list[Track]:
        """Tracks whose box in the current frame is a detection or carried between detector frames."""
        return [t for t in self.tracks if t.time_since_update == 0]

    def coast(self, frame_index: int | None = None, frame_shape: tuple[int, ...] | None = None) -> list[Track]:
        """Advance one frame the detector skipped (DeepStream's ``interval``): every track moves by its
        velocity, none is counted as missed, none starts or ends.  Returns the tracks shown."""
        self.frame_index = self.frame_index + 1 if frame_index is None else int(frame_index)
        if frame_shape is not None:
            self.frame_shape = tuple(frame_shape)
        for t in self.tracks:
            t._coast()
        return self._seen()

    # -- embedding schedule ------------------------------------------------------------------------
    def tracks_to_embed(self, frame_shape: tuple[int, ...] | None = None) -> list[Track]:
        """Tracks whose current crop should be embedded now (see :class:`EmbeddingSchedule`)."""
        shape = frame_shape if frame_shape is not None else self.frame_shape
        return [t for t in self.tracks if self.schedule.reason(t, self.frame_index, shape) is not None]

    def record_embeddings(self, tracks: list[Track], embeddings: np.ndarray, modality: str | list[str] | None = None,
                          frame_shape: tuple[int, ...] | None = None, frame_index: int | None = None,
                          boxes: np.ndarray | None = None) -> None:
        """Store one embedding row per track (rows in the order of ``tracks``) and count them.

        ``frame_index`` and ``boxes`` say where the crops were taken when the rows come back later
        (asynchronous embedding); by default, the current frame and boxes."""
        if not tracks:
            return
        embeddings = np.asarray(embeddings, np.float32).reshape(len(tracks), -1)
        shape = frame_shape if frame_shape is not None else self.frame_shape
        index = self.frame_index if frame_index is None else int(frame_index)
        mods = modality if isinstance(modality, (list, tuple)) else [modality] * len(tracks)
        crop_boxes = [None] * len(tracks) if boxes is None else list(boxes)
        for t, emb, mod, box in zip(tracks, embeddings, mods, crop_boxes):
            t.add_embedding(emb, index, shape, mod, self.schedule.border_margin, box=box)
        self.embeddings_computed += len(tracks)

    @property
    def active_tracks(self) -> list[Track]:
        """Confirmed tracks seen in the current frame."""
        return [t for t in self.tracks if t.confirmed and t.time_since_update == 0]

    def stats(self) -> dict:
        return {"frame": self.frame_index, "tracks": len(self.tracks), "started": self.tracks_started,
                "removed": self.tracks_removed, "embeddings": self.embeddings_computed}


def crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The frame's pixels inside a box (integer-rounded, clipped); may be empty."""
    h, w = frame.shape[:2]
    x1, y1 = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
    x2, y2 = int(min(w, np.ceil(box[2]))), int(min(h, np.ceil(box[3])))
    return frame[y1:max(y1, y2), x1:max(x1, x2)]
