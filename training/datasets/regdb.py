"""RegDB in its official layout with AGW's split lists.

Layout::

    ROOT/Visible/<id>/..._v_....bmp
    ROOT/Thermal/<id>/..._t_....bmp
    ROOT/idx/{train,test}_{visible,thermal}_{trial}.txt   (lines "<path relative to ROOT> <int label>")

Each of the 10 trials is a separately trained model: train on trial t's train lists, test on its
test lists.  Visible images get camera 1 and thermal images camera 2 (as AGW's ``eval_regdb``).
"""
from __future__ import annotations

import operator
import os

from .common import DatasetError, ReIDSplit, make_split, require_dir, require_file

VISIBLE_CAM = 1
THERMAL_CAM = 2
TRIALS = range(1, 11)
TEST_MODES = ("visible_to_thermal", "thermal_to_visible")


def read_list_file(root: str, name: str) -> list[tuple[str, int]]:
    """``(absolute path, label)`` pairs from ``ROOT/idx/<name>``."""
    path = require_file(os.path.join(root, "idx", name), f"RegDB split file {name}")
    pairs = []
    with open(path, "r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)  # rsplit: the label is the last token
            try:
                rel, label = parts[0], int(parts[1])
            except (IndexError, ValueError):
                raise DatasetError(f"{path}:{line_no}: expected '<relative path> <int label>', "
                                   f"got {line!r}") from None
            pairs.append((os.path.join(root, rel), label))
    if not pairs:
        raise DatasetError(f"RegDB split file {path!r} lists no images")
    return pairs


def _check_trial(trial) -> int:
    try:
        if isinstance(trial, bool):
            raise TypeError
        value = operator.index(trial)
    except TypeError:
        value = None
    if value not in TRIALS:
        raise DatasetError(f"RegDB --trial must be an integer in 1..10, got {trial!r}")
    return value


class RegDB:
    """RegDB reader for one trial (1..10).

    Attributes:
        train_visible, train_infrared: lists of ``(path, label, cam)``; cam 1 visible, 2 thermal.
        num_classes: number of training labels.  Labels are relabelled to 0..C-1 over the sorted
            union of both modalities' training labels (a no-op for AGW's lists, already 0..205).
    """

    def __init__(self, root: str | os.PathLike, trial: int = 1):
        root = os.fspath(root)
        trial = _check_trial(trial)
        require_dir(root, "RegDB root")
        require_dir(os.path.join(root, "idx"), "RegDB split folder idx/")
        self.root, self.trial = root, trial

        visible = read_list_file(root, f"train_visible_{trial}.txt")
        thermal = read_list_file(root, f"train_thermal_{trial}.txt")
        self._check_exist(visible[:1] + thermal[:1], "train")
        self.label2index = {label: i for i, label in enumerate(sorted({l for _, l in visible + thermal}))}
        self.train_visible = [(p, self.label2index[l], VISIBLE_CAM) for p, l in visible]
        self.train_infrared = [(p, self.label2index[l], THERMAL_CAM) for p, l in thermal]
        self.num_classes = len(self.label2index)

    def _check_exist(self, pairs: list[tuple[str, int]], which: str) -> None:
        """Cheap sanity check on the first entries: catches a wrong root early, not mid-epoch."""
        for path, _ in pairs:
            if not os.path.isfile(path):
                raise DatasetError(f"RegDB {which} image listed in idx/ not found: {path!r} "
                                   f"(is {self.root!r} the RegDB root?)")

    def test(self, mode: str = "visible_to_thermal") -> tuple[ReIDSplit, ReIDSplit]:
        """``(query, gallery)`` of this trial's test ids.

        ``visible_to_thermal`` (the default protocol): visible query, thermal gallery;
        ``thermal_to_visible`` swaps them.  Pids are the labels of the test lists.
        """
        if mode not in TEST_MODES:
            raise ValueError(f"RegDB test mode must be one of {TEST_MODES}, not {mode!r}")
        visible = read_list_file(self.root, f"test_visible_{self.trial}.txt")
        thermal = read_list_file(self.root, f"test_thermal_{self.trial}.txt")
        self._check_exist(visible[:1] + thermal[:1], "test")
        visible_split = make_split([(p, l, VISIBLE_CAM) for p, l in visible])
        thermal_split = make_split([(p, l, THERMAL_CAM) for p, l in thermal])
        if mode == "visible_to_thermal":
            return visible_split, thermal_split
        return thermal_split, visible_split

    def __repr__(self) -> str:
        return (f"RegDB(root={self.root!r}, trial={self.trial}, classes={self.num_classes}, "
                f"visible={len(self.train_visible)}, thermal={len(self.train_infrared)})")
