"""Score person detectors against frames annotated by hand: recall, false boxes, and time per frame.

    python -m admpff.runtime.detector_eval --video ../shared/data/vtest.avi \\
        --annotations tests/data/vtest_people.json --detector ssdlite --detector hog

A detection matches an annotated person at IoU >= ``--iou`` (0.5, as PASCAL VOC), one to one, best
score first; a detection that matches nobody and lies mostly inside an "ignore" region (people too
small to annotate) is not counted as false.  Detectors are timed interleaved, frame by frame, so a
CPU shared with other work slows them alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detectors import DetectorError, build_detector
from .tracker import iou_matrix

__all__ = ["FrameAnnotation", "DetectionScore", "load_annotations", "read_frames", "match_frame", "score_detector"]


@dataclass(frozen=True)
class FrameAnnotation:
    index: int
    people: np.ndarray   # float32 [N, 4] x1,y1,x2,y2
    ignore: np.ndarray   # float32 [M, 4]


@dataclass
class DetectionScore:
    people: int = 0
    found: int = 0
    false_boxes: int = 0
    ms: list[float] = field(default_factory=list)
    per_frame: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # index -> (people, found, false)

    @property
    def recall(self) -> float:
        return self.found / self.people if self.people else 0.0

    def add(self, index: int, people: int, found: int, false_boxes: int) -> None:
        self.people += people
        self.found += found
        self.false_boxes += false_boxes
        self.per_frame[index] = (people, found, false_boxes)


def load_annotations(path: str | Path) -> list[FrameAnnotation]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for key, frame in sorted(data["frames"].items(), key=lambda kv: int(kv[0])):
        out.append(FrameAnnotation(int(key), np.asarray(frame["people"], np.float32).reshape(-1, 4),
                                   np.asarray(frame.get("ignore", []), np.float32).reshape(-1, 4)))
    return out


def read_frames(video: str | Path, indices) -> dict[int, np.ndarray]:
    """The frames at ``indices`` (0-based), read sequentially (seeking is inexact in some codecs)."""
    import cv2

    wanted = set(int(i) for i in indices)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    frames, index = {}, 0
    try:
        while wanted - set(frames):
            ok, frame = cap.read()
            if not ok:
                break
            if index in wanted:
                frames[index] = frame
            index += 1
    finally:
        cap.release()
    missing = sorted(wanted - set(frames))
    if missing:
        raise ValueError(f"{video} has no frame(s) {missing} (it ended at frame {index - 1})")
    return frames


def _inside_fraction(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """For each box, the largest fraction of its area inside one of ``regions``."""
    if len(boxes) == 0 or len(regions) == 0:
        return np.zeros(len(boxes), np.float32)
    x1 = np.maximum(boxes[:, None, 0], regions[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], regions[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], regions[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], regions[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    return (inter / np.maximum(area, 1e-6)).max(axis=1)


def match_frame(boxes: np.ndarray, scores: np.ndarray, annotation: FrameAnnotation,
                iou: float = 0.5) -> tuple[int, int]:
    """-> (people found, false boxes) for one frame; greedy one-to-one matching, best score first."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float32).reshape(-1), kind="stable")
    boxes = boxes[order]
    people = annotation.people
    taken = np.zeros(len(people), bool)
    unmatched = []
    ious = iou_matrix(boxes, people) if len(boxes) and len(people) else np.zeros((len(boxes), len(people)))
    for i in range(len(boxes)):
        candidates = np.where(~taken & (ious[i] >= iou))[0] if len(people) else []
        if len(candidates):
            taken[candidates[np.argmax(ious[i, candidates])]] = True
        else:
            unmatched.append(i)
    unmatched_boxes = boxes[unmatched]
    false_boxes = int(np.sum(_inside_fraction(unmatched_boxes, annotation.ignore) < 0.5))
    return int(taken.sum()), false_boxes


def score_detector(detector, frames: dict[int, np.ndarray], annotations: list[FrameAnnotation],
                   iou: float = 0.5) -> DetectionScore:
    score = DetectionScore()
    for ann in annotations:
        boxes, scores = detector.detect(frames[ann.index], frame_index=ann.index)
        found, false_boxes = match_frame(boxes, scores, ann, iou)
        score.add(ann.index, len(ann.people), found, false_boxes)
    return score


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m admpff.runtime.detector_eval", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--video", default="../shared/data/vtest.avi")
    ap.add_argument("--annotations", default="tests/data/vtest_people.json")
    ap.add_argument("--detector", action="append", default=None,
                    help="detector spec as admpff-reid --detector takes it; repeatable (default: ssdlite and hog)")
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over the annotated frames")
    ap.add_argument("--threads", type=int, default=None, help="threads for OpenVINO detectors")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    specs = args.detector or ["ssdlite", "hog"]
    try:
        annotations = load_annotations(args.annotations)
        frames = read_frames(args.video, [a.index for a in annotations])
        detectors = {}
        for spec in specs:
            options = {"threads": args.threads} if args.threads and spec in ("ssdlite", "auto") else {}
            detectors[spec] = build_detector(spec, **options)
    except (DetectorError, FileNotFoundError, ValueError, KeyError, OSError) as exc:
        print(f"detector_eval: error: {exc}", file=sys.stderr)
        return 2
    results = {spec: score_detector(det, frames, annotations, args.iou) for spec, det in detectors.items()}
    # The scoring pass above doubles as warm-up; now time them, interleaved frame by frame.
    for _ in range(args.repeats):
        for ann in annotations:
            for spec, det in detectors.items():
                t0 = time.perf_counter()
                det.detect(frames[ann.index], frame_index=ann.index)
                results[spec].ms.append((time.perf_counter() - t0) * 1000.0)
    people = sum(len(a.people) for a in annotations)
    print(f"{len(annotations)} frames ({', '.join(str(a.index) for a in annotations)}), {people} people annotated, "
          f"IoU >= {args.iou}")
    print("| detector | found | recall | false boxes | ms/frame median | p90 |")
    print("| --- | --- | --- | --- | --- | --- |")
    table = {}
    for spec, r in results.items():
        ms = np.asarray(r.ms)
        table[spec] = {"found": r.found, "people": r.people, "recall": round(r.recall, 4),
                       "false_boxes": r.false_boxes, "ms_median": round(float(np.median(ms)), 2),
                       "ms_p90": round(float(np.percentile(ms, 90)), 2), "per_frame": r.per_frame,
                       "detector": repr(detectors[spec])}
        print(f"| {spec} | {r.found}/{r.people} | {r.recall:.2f} | {r.false_boxes} | "
              f"{table[spec]['ms_median']:.1f} | {table[spec]['ms_p90']:.1f} |")
    if args.json:
        from .atomic import write_json

        write_json(args.json, {"frames": [a.index for a in annotations], "people": people, "iou": args.iou,
                               "detectors": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
