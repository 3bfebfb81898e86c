"""Cross-modality re-ID evaluation with AGW's exact semantics (numpy only, no torch).

``eval_sysu`` and ``eval_regdb`` port ``eval_metrics.py`` of ``mangye16/Cross-Modal-Re-ID-baseline``
(the evaluation essentially every PyTorch VI-ReID paper reports), so numbers are comparable:

* the gallery is ranked by ascending distance with ``np.argsort``'s default kind, as AGW does, so
  ties break identically;
* SYSU-MM01 drops every cam-2 gallery image for cam-3 queries, whatever its identity (the official
  MATLAB treats cam3 and cam2 as the same location);
* SYSU-MM01 CMC is identity-level: the ranked list is de-duplicated by identity (first occurrence
  kept) before the cumulative match, so rank-k means "the true id is among the first k distinct ids";
* mAP and mINP use the raw (not de-duplicated) filtered ranking;
* queries with no true match left are excluded from the ``num_valid_q`` denominator.

Where AGW would crash or return a ragged curve (fewer ranked entries than ``max_rank``), the curve
here is padded with its last value, which is what a cumulative match means past the end of the list;
the returned CMC therefore always has exactly ``max_rank`` entries.
"""
from __future__ import annotations

import os
import tempfile
from typing import Mapping, Sequence

import numpy as np

__all__ = ["eval_sysu", "eval_regdb", "compute_distmat", "summarize", "format_table", "plot_cmc"]

SYSU_QUERY_CAM_WITH_SHARED_LOCATION = 3  # cam3 (indoor IR) ...
SYSU_GALLERY_CAM_SHARED_LOCATION = 2     # ... sits at the same location as cam2 (indoor RGB)


def _pad_to(curve: np.ndarray, length: int) -> np.ndarray:
    """Truncate/pad a cumulative curve to ``length``; padding repeats the last value (0 if empty)."""
    curve = np.asarray(curve[:length], dtype=np.float32)
    if curve.size < length:
        fill = curve[-1] if curve.size else 0.0
        curve = np.concatenate([curve, np.full(length - curve.size, fill, np.float32)])
    return curve


def _ap_and_inp(raw_matches: np.ndarray) -> tuple[float, float]:
    """AP and INP of one query's binary match vector (which has at least one 1)."""
    hits = raw_matches.cumsum()
    last_true = int(np.flatnonzero(raw_matches)[-1])
    inp = hits[last_true] / (last_true + 1.0)
    precision_at_k = hits / np.arange(1.0, raw_matches.size + 1.0)
    ap = float((precision_at_k * raw_matches).sum() / raw_matches.sum())
    return ap, float(inp)


def _check_inputs(distmat: np.ndarray, q_pids, g_pids, max_rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query x num_gallery), got shape {distmat.shape}")
    if distmat.shape != (q_pids.size, g_pids.size):
        raise ValueError(f"distmat shape {distmat.shape} does not match {q_pids.size} query and "
                         f"{g_pids.size} gallery ids")
    if distmat.shape[1] == 0:
        raise ValueError("the gallery is empty")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    return distmat, q_pids.ravel(), g_pids.ravel()


def eval_sysu(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
              max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01 evaluation, AGW semantics.

    ``distmat[i, j]`` is the distance of query i to gallery j (smaller = more similar).  Returns
    ``(cmc, mAP, mINP)``: ``cmc`` float32 of length ``max_rank`` (identity-level CMC, fraction of valid
    queries; ``cmc[0]`` is rank-1), mAP and mINP as fractions.  Raises ``ValueError`` when no query
    has a true match in the (camera-filtered) gallery.
    """
    distmat, q_pids, g_pids = _check_inputs(distmat, q_pids, g_pids, max_rank)
    q_camids, g_camids = np.asarray(q_camids).ravel(), np.asarray(g_camids).ravel()
    if q_camids.size != q_pids.size or g_camids.size != g_pids.size:
        raise ValueError("camera id arrays must have one entry per query / gallery item")

    indices = np.argsort(distmat, axis=1)  # default kind on purpose: identical tie-breaking to AGW
    ranked_pids = g_pids[indices]
    matches = (ranked_pids == q_pids[:, None]).astype(np.int32)

    cmc_sum = np.zeros(max_rank, np.float64)
    all_ap, all_inp = [], []
    for q in range(q_pids.size):
        order = indices[q]
        remove = (q_camids[q] == SYSU_QUERY_CAM_WITH_SHARED_LOCATION) & \
                 (g_camids[order] == SYSU_GALLERY_CAM_SHARED_LOCATION)
        keep = ~remove

        # Identity-level CMC: first occurrence of each identity, in rank order.
        kept_pids = ranked_pids[q][keep]
        first_positions = np.sort(np.unique(kept_pids, return_index=True)[1])
        deduped_match = (kept_pids[first_positions] == q_pids[q]).astype(np.int32)
        # Summed even for queries without a match (they add zeros), exactly as AGW.
        cmc_sum += _pad_to(deduped_match.cumsum(), max_rank)

        raw_matches = matches[q][keep]
        if not raw_matches.any():
            continue  # the identity is absent from this gallery: not a valid query
        ap, inp = _ap_and_inp(raw_matches)
        all_ap.append(ap)
        all_inp.append(inp)

    num_valid_q = len(all_ap)
    if num_valid_q == 0:
        raise ValueError("no query identity appears in the gallery (after the cam3/cam2 filter); "
                         "cannot evaluate")
    cmc = (cmc_sum / num_valid_q).astype(np.float32)
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp))


def eval_regdb(distmat: np.ndarray, q_pids, g_pids, max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """RegDB evaluation, AGW semantics: image-level CMC (clipped cumulative match), AP and INP.

    Query and gallery come from different modalities, so nothing is removed.  Returns
    ``(cmc, mAP, mINP)`` as in :func:`eval_sysu`; raises ``ValueError`` if no query has a match.
    """
    distmat, q_pids, g_pids = _check_inputs(distmat, q_pids, g_pids, max_rank)
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)

    cmc_sum = np.zeros(max_rank, np.float64)
    all_ap, all_inp = [], []
    for q in range(q_pids.size):
        raw_matches = matches[q]
        if not raw_matches.any():
            continue
        cmc_sum += _pad_to(np.minimum(raw_matches.cumsum(), 1), max_rank)
        ap, inp = _ap_and_inp(raw_matches)
        all_ap.append(ap)
        all_inp.append(inp)

    num_valid_q = len(all_ap)
    if num_valid_q == 0:
        raise ValueError("no query identity appears in the gallery; cannot evaluate")
    cmc = (cmc_sum / num_valid_q).astype(np.float32)
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp))


def compute_distmat(q_feats: np.ndarray, g_feats: np.ndarray) -> np.ndarray:
    """Distance = negative cosine similarity, ``-q @ g.T`` (features must already be L2-normalised)."""
    q = np.asarray(q_feats, dtype=np.float32)
    g = np.asarray(g_feats, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"feature matrices must be 2-D with equal widths, got {q.shape} and {g.shape}")
    return -(q @ g.T)


SUMMARY_RANKS = (1, 5, 10, 20)


def summarize(results: Sequence[tuple[np.ndarray, float, float]]) -> dict:
    """Mean over trials of ``(cmc, mAP, mINP)`` tuples, in percent.

    Returns ``{"rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "trials", "cmc"}``; a rank key
    is left out when the curves are shorter than it, and ``cmc`` is the mean curve (list, percent).
    """
    if len(results) == 0:
        raise ValueError("summarize() needs at least one (cmc, mAP, mINP) result")
    lengths = {len(cmc) for cmc, _, _ in results}
    if len(lengths) != 1:
        raise ValueError(f"CMC curves have different lengths across trials: {sorted(lengths)}")
    mean_cmc = 100.0 * np.mean([np.asarray(cmc, np.float64) for cmc, _, _ in results], axis=0)
    summary: dict = {f"rank{k}": float(mean_cmc[k - 1]) for k in SUMMARY_RANKS if k <= mean_cmc.size}
    summary["mAP"] = 100.0 * float(np.mean([m for _, m, _ in results]))
    summary["mINP"] = 100.0 * float(np.mean([m for _, _, m in results]))
    summary["trials"] = len(results)
    summary["cmc"] = [float(v) for v in mean_cmc]
    return summary


_TABLE_COLUMNS = (("rank1", "R1"), ("rank5", "R5"), ("rank10", "R10"), ("rank20", "R20"),
                  ("mAP", "mAP"), ("mINP", "mINP"))


def format_table(rows: Mapping[str, Mapping]) -> str:
    """Plain-text table of :func:`summarize` outputs, one row per named setting (``-`` if missing)."""
    name_width = max([len("setting")] + [len(str(name)) for name in rows])
    header = "setting".ljust(name_width) + "".join(f"{title:>8}" for _, title in _TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for name, metrics in rows.items():
        cells = []
        for key, _ in _TABLE_COLUMNS:
            value = metrics.get(key)
            cells.append(f"{value:8.2f}" if isinstance(value, (int, float, np.floating)) else f"{'-':>8}")
        lines.append(str(name).ljust(name_width) + "".join(cells))
    return "\n".join(lines)


def plot_cmc(curves: Mapping[str, np.ndarray], path: str | os.PathLike):
    """Write a PNG of CMC curves (rank 1..N) with integer rank ticks; returns the matplotlib Figure.

    Curves whose values are all <= 1 are treated as fractions and shown in percent.  The figure is
    rendered with the Agg canvas (no pyplot global state) and written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not curves:
        raise ValueError("plot_cmc() needs at least one curve")
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        values = np.asarray(curve, np.float64).ravel()
        if values.size and values.max() <= 1.0:
            values = values * 100.0
        ax.plot(np.arange(1, values.size + 1), values, marker="o", markersize=3, label=str(name))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # ranks are whole numbers (no 2.5, 7.5)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title("CMC")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cmc-", suffix=".png", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return fig
