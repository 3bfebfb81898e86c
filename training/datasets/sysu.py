"""SYSU-MM01 in its official layout, read exactly as AGW (``mangye16/Cross-Modal-Re-ID-baseline``) does.

Layout::

    ROOT/cam1 .. cam6/<pid:04d>/<nnnn>.jpg
    ROOT/exp/train_id.txt, val_id.txt, test_id.txt   (one line of comma-separated ints)

RGB cameras are 1, 2, 4, 5 (1, 2 indoor); IR cameras are 3 (indoor) and 6 (outdoor).  Training uses
train + val ids; the query is every IR image of the test ids (both modes); the gallery is one random
RGB image per test id and camera, drawn per trial with Python's ``random`` seeded by the trial number,
so galleries are identical to those of the published PyTorch code.
"""
from __future__ import annotations

import os
import random
import re

from .common import DatasetError, ReIDSplit, make_split, require_dir, require_file, sorted_images

RGB_CAMERAS = (1, 2, 4, 5)
IR_CAMERAS = (3, 6)
GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
# AGW keeps cam6 queries in indoor mode too (they are simply scored against an indoor gallery).
QUERY_CAMERAS = {"all": IR_CAMERAS, "indoor": IR_CAMERAS}


def read_id_file(path: str) -> list[int]:
    """Ids in an ``exp/*_id.txt`` file (comma-separated ints; newlines tolerated)."""
    require_file(path, f"SYSU-MM01 split file {os.path.basename(path)}")
    with open(path, "r", encoding="utf-8") as f:
        tokens = [t for t in re.split(r"[,\s]+", f.read()) if t]
    try:
        ids = [int(t) for t in tokens]
    except ValueError:
        raise DatasetError(f"SYSU-MM01 split file {path!r} must hold comma-separated integers") from None
    if not ids:
        raise DatasetError(f"SYSU-MM01 split file {path!r} holds no ids (empty id list)")
    return ids


def _check_mode(mode: str) -> str:
    if mode not in GALLERY_CAMERAS:
        raise ValueError(f"SYSU-MM01 mode must be one of {sorted(GALLERY_CAMERAS)}, not {mode!r}")
    return mode


class SYSUMM01:
    """SYSU-MM01 reader.

    Attributes:
        train_visible, train_infrared: lists of ``(path, label, cam)`` for the train + val ids.
        num_classes: number of training labels.
        pid2label: original id -> label.  As AGW, labels enumerate the sorted ids that have IR
            images; visible images of ids without any IR image have no label and are dropped
            (their count is in ``dropped_visible``).  In the official data every id has both.
        train_ids, test_ids: sorted original ids.
    """

    def __init__(self, root: str | os.PathLike):
        root = os.fspath(root)
        require_dir(root, "SYSU-MM01 root")
        exp = os.path.join(root, "exp")
        train_ids = read_id_file(os.path.join(exp, "train_id.txt"))
        train_ids += read_id_file(os.path.join(exp, "val_id.txt"))
        test_ids = read_id_file(os.path.join(exp, "test_id.txt"))
        self._init(root, train_ids, test_ids)

    @classmethod
    def _from_ids(cls, root: str, train_ids: list[int], test_ids: list[int]) -> "SYSUMM01":
        obj = cls.__new__(cls)
        obj._init(root, train_ids, test_ids)
        return obj

    def _init(self, root: str, train_ids: list[int], test_ids: list[int]) -> None:
        self.root = root
        self.train_ids = sorted(set(train_ids))
        self.test_ids = sorted(set(test_ids))
        visible = self._scan(self.train_ids, RGB_CAMERAS)
        infrared = self._scan(self.train_ids, IR_CAMERAS)
        if not visible or not infrared:
            missing = "visible" if not visible else "infrared"
            raise DatasetError(f"no {missing} training images found under {root!r} "
                               f"(expected {root}/camN/<pid:04d>/*.jpg for the ids in exp/)")
        self.pid2label = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in infrared}))}
        self.train_infrared = [(p, self.pid2label[pid], cam) for p, pid, cam in infrared]
        self.train_visible = [(p, self.pid2label[pid], cam) for p, pid, cam in visible if pid in self.pid2label]
        self.dropped_visible = len(visible) - len(self.train_visible)
        self.num_classes = len(self.pid2label)

    def _folder(self, cam: int, pid: int) -> str:
        return os.path.join(self.root, f"cam{cam}", "%04d" % pid)

    def _scan(self, ids: list[int], cameras: tuple[int, ...]) -> list[tuple[str, int, int]]:
        """(path, pid, cam) for sorted ids x cameras x sorted files, AGW's order."""
        return [(path, pid, cam) for pid in ids for cam in cameras
                for path in sorted_images(self._folder(cam, pid))]

    def query(self, mode: str = "all") -> ReIDSplit:
        """Every IR image (cams 3 and 6) of the test ids, in both modes."""
        records = self._scan(self.test_ids, QUERY_CAMERAS[_check_mode(mode)])
        if not records:
            raise DatasetError(f"no SYSU-MM01 query (IR) images found under {self.root!r} for the test ids")
        return make_split(records)

    def gallery(self, mode: str = "all", trial: int = 0) -> ReIDSplit:
        """Single-shot RGB gallery of one trial: one random image per test id and camera.

        Identical to AGW's ``process_gallery_sysu``: seed with ``trial``, then for each sorted id and
        each of the mode's cameras whose folder is non-empty, ``choice`` among the sorted files.  A
        private ``random.Random(trial)`` gives the same draws without touching the global state.
        """
        cameras = GALLERY_CAMERAS[_check_mode(mode)]
        rng = random.Random(trial)
        records = []
        for pid in self.test_ids:
            for cam in cameras:
                files = sorted_images(self._folder(cam, pid))
                if files:
                    records.append((rng.choice(files), pid, cam))
        if not records:
            raise DatasetError(f"no SYSU-MM01 gallery (RGB) images found under {self.root!r} "
                               f"for the test ids in {mode!r} mode")
        return make_split(records)

    def heldout_split(self, fraction: float = 0.1, seed: int = 0) -> "SYSUMM01":
        """Hold some training ids out as a validation set (SYSU-MM01 has none).

        Returns a new reader whose training lists cover the remaining ids (relabelled) and whose
        ``query``/``gallery`` follow the test protocol over the held-out ids.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        candidates = sorted(self.pid2label)  # ids with IR images, so they can be queried
        if len(candidates) < 2:
            raise DatasetError("need at least two training ids with IR images to hold some out")
        count = min(len(candidates) - 1, max(1, round(fraction * len(candidates))))
        heldout = set(random.Random(seed).sample(candidates, count))
        remaining = [pid for pid in self.train_ids if pid not in heldout]
        return SYSUMM01._from_ids(self.root, remaining, sorted(heldout))

    def __repr__(self) -> str:
        return (f"SYSUMM01(root={self.root!r}, classes={self.num_classes}, "
                f"visible={len(self.train_visible)}, infrared={len(self.train_infrared)}, "
                f"test_ids={len(self.test_ids)})")
