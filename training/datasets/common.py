"""Shared pieces of the data-set readers: the error type, the split record and small file helpers."""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ValueError):
    """A data set on disk is missing, incomplete or not in the expected layout."""


class ReIDSplit(NamedTuple):
    """A query or gallery set: ``paths`` (list of str), ``pids`` and ``camids`` (int64 arrays)."""

    paths: list
    pids: np.ndarray
    camids: np.ndarray

    @property
    def size(self) -> int:
        return len(self.paths)


def make_split(records: list[tuple[str, int, int]]) -> ReIDSplit:
    """(path, pid, cam) tuples -> :class:`ReIDSplit`."""
    return ReIDSplit(paths=[r[0] for r in records],
                     pids=np.asarray([r[1] for r in records], dtype=np.int64),
                     camids=np.asarray([r[2] for r in records], dtype=np.int64))


def require_dir(path: str, what: str) -> str:
    """Return ``path`` if it is a directory, else raise a :class:`DatasetError` naming it."""
    if not os.path.isdir(path):
        raise DatasetError(f"{what} not found: {path!r} is not a directory")
    return path


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise DatasetError(f"{what} not found: {path!r}")
    return path


def sorted_images(directory: str) -> list[str]:
    """Full paths of the image files in ``directory``, sorted by name ([] if it does not exist).

    Hidden files and non-images are ignored (AGW lists every file; the official data sets hold only
    images, so the result is the same there).
    """
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory)
                   if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(directory, n) for n in names]
