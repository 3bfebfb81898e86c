"""Held-out labelled crops for retrieval mAP in the verify report (``--verify-data sysu:ROOT``).

Uses the data sets' TEST protocol (SYSU-MM01 all-search with ``trials`` random galleries, their mAP
averaged; RegDB visible->thermal) through the same readers and the same preprocessing as evaluation and
the runtime.
"""
from __future__ import annotations

import numpy as np

from admpff.runtime.contract import INFRARED, VISIBLE, InputContract
from admpff.runtime.preprocess import crops_to_batch

from .checkpoint_io import ExportError
from .verify import RetrievalData


def _read(paths: list[str], contract: InputContract) -> np.ndarray:
    import cv2

    crops = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ExportError(f"cannot read verification image {p}")
        crops.append(img)
    return crops_to_batch(crops, contract)


def _every(n: int, limit: int) -> np.ndarray:
    """A deterministic, evenly spread subset of at most ``limit`` indices."""
    return np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).round().astype(int)


def load_retrieval_data(spec: str, contract: InputContract, max_queries: int = 400, trials: int = 1) -> RetrievalData:
    """``trials`` > 1 (SYSU-MM01): the galleries of trials 0..trials-1, read once as their union; the
    verification mAP is then their mean, as the SYSU protocol reports it (one single-shot gallery is a
    noisy measure: a model with cosine 0.99996 to FP32 moved it by half a point, README "Measured")."""
    kind, _, rest = spec.partition(":")
    if kind not in ("sysu", "regdb") or not rest:
        raise ExportError(f"--verify-data must be sysu:ROOT or regdb:ROOT[:trial], not {spec!r}")
    if kind == "sysu":
        from admpff.training.datasets.sysu import SYSUMM01

        ds = SYSUMM01(rest)
        q, galleries = ds.query("all"), [ds.gallery("all", trial=t) for t in range(max(1, trials))]
        q_mod, g_mod = INFRARED, VISIBLE
    else:
        from admpff.training.datasets.regdb import RegDB

        root, _, trial = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "1")
        q, g = RegDB(root, int(trial)).test("visible_to_thermal")
        galleries = [g]
        q_mod, g_mod = VISIBLE, INFRARED
    keep = _every(len(q.paths), max_queries)
    # the galleries' union, in first-seen order (one gallery: exactly that gallery), each image read once
    where: dict = {}
    g_paths, g_pids, g_camids = [], [], []
    for gallery in galleries:
        for path, pid, camid in zip(gallery.paths, gallery.pids, gallery.camids):
            if path not in where:
                where[path] = len(g_paths)
                g_paths.append(path), g_pids.append(pid), g_camids.append(camid)
    return RetrievalData(
        name=spec, protocol=kind,
        query_images=_read([q.paths[i] for i in keep], contract), query_modality=np.full(len(keep), q_mod, np.int32),
        query_pids=np.asarray(q.pids)[keep], query_camids=np.asarray(q.camids)[keep],
        gallery_images=_read(g_paths, contract), gallery_modality=np.full(len(g_paths), g_mod, np.int32),
        gallery_pids=np.asarray(g_pids), gallery_camids=np.asarray(g_camids),
        gallery_trials=[np.asarray([where[p] for p in g.paths]) for g in galleries] if len(galleries) > 1 else None)
