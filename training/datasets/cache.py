"""A memory-mapped cache of preprocessed images (N x H x W x 3 uint8, the contract's size and order).

AGW keeps every resized training image in RAM (about 4.3 GB for SYSU-MM01); a memory map gives the
same random access without the resident memory, and is built once.  Images go through
``admpff.runtime.preprocess.resize_crop`` so training sees exactly what the runtime feeds the model.

Files: ``<cache_path>`` (a ``.npy``) plus ``<cache_path>.json``, a sidecar with the source paths, the
kept indices, the contract's size and a fingerprint of the sources (path, size, mtime).  A cache whose
fingerprint no longer matches is rebuilt.  The array is written to a temporary file and moved into
place with ``os.replace`` (the sidecar after it), so an interrupted build never leaves a half cache
that looks valid.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from admpff.runtime.contract import DEFAULT_CONTRACT, InputContract
from admpff.runtime.preprocess import resize_crop

from .common import DatasetError

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_REPORTED_SKIPS = 5   # how many unreadable paths a warning names
_CHUNK = 256          # images decoded per batch of threads (bounds memory held in flight)


@dataclass
class CachedImages:
    """A built cache.

    ``images`` is the read-only memmap ``N_kept x H x W x 3``; ``paths`` the kept source paths;
    ``kept_indices`` (int64) maps each cached row to its index in the ``paths`` given to
    :func:`build_image_cache`, so labels can be filtered with :meth:`select`; ``skipped`` lists the
    unreadable source paths.
    """

    images: np.ndarray
    paths: list
    kept_indices: np.ndarray
    skipped: list
    cache_path: str

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def index_of_kept(self) -> np.ndarray:
        """Alias of ``kept_indices``."""
        return self.kept_indices

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def select(self, values: Sequence) -> np.ndarray:
        """Keep the entries of a per-source array (labels, cameras) that belong to cached images."""
        values = np.asarray(values)
        if len(values) != len(self.kept_indices) + len(self.skipped):
            raise ValueError(f"expected one value per source path ({len(self.kept_indices) + len(self.skipped)}), "
                             f"got {len(values)}")
        return values[self.kept_indices]


def sidecar_path(cache_path: str) -> str:
    return cache_path + ".json"


def fingerprint(paths: Sequence[str], contract: InputContract) -> str:
    """sha256 over the ordered paths with their sizes and mtimes, and the preprocessing settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT_VERSION, contract.height, contract.width,
                              contract.channel_order, contract.resize_interpolation]).encode())
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{path}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _load(path: str, contract: InputContract) -> np.ndarray | None:
    """Decoded and resized image, or None when it cannot be read (missing, corrupt, empty)."""
    try:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            return None
        return resize_crop(bgr, contract)
    except (cv2.error, ValueError, TypeError):
        return None


def _open_existing(cache_path: str, expected_fp: str, contract: InputContract) -> CachedImages | None:
    """The cache at ``cache_path`` if it is complete and matches ``expected_fp``, else None."""
    try:
        with open(sidecar_path(cache_path), "r", encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("fingerprint") != expected_fp:
            return None
        images = np.load(cache_path, mmap_mode="r")
        if images.shape != (len(meta["kept_indices"]), contract.height, contract.width, 3):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    sources = meta["paths"]
    kept = np.asarray(meta["kept_indices"], dtype=np.int64)
    return CachedImages(images=images, paths=[sources[i] for i in kept], kept_indices=kept,
                        skipped=list(meta["skipped"]), cache_path=cache_path)


def _tmp_npy(directory: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".cache-", suffix=".npy.tmp", dir=directory)
    os.close(fd)
    return tmp


def build_image_cache(paths: Sequence[str], cache_path: str | os.PathLike,
                      contract: InputContract = DEFAULT_CONTRACT, progress: bool = True,
                      workers: int | None = None) -> CachedImages:
    """Decode, resize and store ``paths`` as a memory-mapped uint8 array; reuse it if up to date.

    Unreadable images are skipped (counted in ``.skipped``, the first few named in a warning) so a
    corrupt file fails here, once, and never mid-epoch.  Raises :class:`DatasetError` if ``paths`` is
    empty or no image at all can be read.  ``workers`` threads decode in parallel (OpenCV releases
    the GIL); rows keep the order of ``paths``.
    """
    from tqdm import tqdm

    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DatasetError("build_image_cache() got no image paths")
    cache_path = os.fspath(cache_path)
    expected_fp = fingerprint(paths, contract)
    cached = _open_existing(cache_path, expected_fp, contract)
    if cached is not None:
        return cached

    directory = os.path.dirname(os.path.abspath(cache_path))
    os.makedirs(directory, exist_ok=True)
    try:  # the old sidecar must not vouch for whatever ends up at cache_path
        os.unlink(sidecar_path(cache_path))
    except FileNotFoundError:
        pass

    shape = (contract.height, contract.width, 3)
    workers = workers or min(8, os.cpu_count() or 1)
    tmp_paths = []
    try:
        tmp_full = _tmp_npy(directory)
        tmp_paths.append(tmp_full)
        full = np.lib.format.open_memmap(tmp_full, mode="w+", dtype=np.uint8, shape=(len(paths),) + shape)
        kept, skipped = [], []
        bar = tqdm(total=len(paths), desc=f"caching {os.path.basename(cache_path)}",
                   unit="img", disable=not progress)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(paths), _CHUNK):
                chunk = paths[start:start + _CHUNK]
                for offset, image in enumerate(pool.map(lambda p: _load(p, contract), chunk)):
                    if image is None:
                        skipped.append(chunk[offset])
                    else:
                        full[len(kept)] = image
                        kept.append(start + offset)
                bar.update(len(chunk))
        bar.close()

        if skipped:
            log.warning("image cache %s: skipped %d unreadable image(s), e.g. %s", cache_path,
                        len(skipped), ", ".join(skipped[:_REPORTED_SKIPS]))
        if not kept:
            raise DatasetError(f"none of the {len(paths)} images could be read (first: {paths[0]!r})")

        if skipped:  # compact to the kept rows so the cache holds no blank images
            tmp_final = _tmp_npy(directory)
            tmp_paths.append(tmp_final)
            final = np.lib.format.open_memmap(tmp_final, mode="w+", dtype=np.uint8, shape=(len(kept),) + shape)
            for start in range(0, len(kept), _CHUNK):
                stop = min(start + _CHUNK, len(kept))
                final[start:stop] = full[start:stop]
            final.flush()
            del final
        else:
            tmp_final = tmp_full
        full.flush()
        del full
        os.replace(tmp_final, cache_path)

        meta = {"version": CACHE_FORMAT_VERSION, "fingerprint": expected_fp,
                "height": contract.height, "width": contract.width,
                "channel_order": contract.channel_order, "paths": paths,
                "kept_indices": kept, "skipped": skipped}
        fd, tmp_meta = tempfile.mkstemp(prefix=".cache-", suffix=".json.tmp", dir=directory)
        tmp_paths.append(tmp_meta)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f)
        os.replace(tmp_meta, sidecar_path(cache_path))
    finally:
        for tmp in tmp_paths:
            if os.path.exists(tmp):
                os.unlink(tmp)

    cached = _open_existing(cache_path, expected_fp, contract)
    if cached is None:  # should not happen; a clear error beats a silent rebuild loop
        raise DatasetError(f"image cache {cache_path!r} could not be reopened after building it")
    return cached
