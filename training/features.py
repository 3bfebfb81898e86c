"""Feature extraction and the SYSU-MM01 / RegDB test protocols, on the runtime's preprocessing path.

Query and gallery images go through :func:`admpff.training.datasets.cache.build_image_cache`, i.e.
``cv2.imread`` -> ``admpff.runtime.preprocess.resize_crop`` (the contract's size, interpolation and
channel order), exactly what the deployed runtime does to a crop, and are normalised with the
contract's statistics.  No test-time augmentation (HcTri has none).

SYSU-MM01 (as ``test_mine_pcb.py``): the query (every IR image of the test ids) is embedded once;
the 10 single-shot RGB galleries are drawn per trial (``random.seed(trial)``, AGW's draw) and their
union is embedded once, which gives the same features as re-extracting per trial.  RegDB: one model
per trial; visible->thermal by default, thermal->visible with ``tvsearch``.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Sequence

import numpy as np
import torch

from admpff.runtime.contract import INFRARED, VISIBLE, InputContract

from .datasets.cache import CachedImages, build_image_cache
from .datasets.common import DatasetError, ReIDSplit
from .evaluation import compute_distmat, eval_regdb, eval_sysu, summarize
from .transforms import Normalizer

log = logging.getLogger(__name__)

CACHE_ENV = "ADMPFF_CACHE_DIR"


def default_cache_dir(data_root: str) -> str:
    """``$ADMPFF_CACHE_DIR`` if set, else ``ROOT/.admpff-cache`` when writable, else ``~/.cache/admpff/<hash>``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    root = os.path.abspath(os.fspath(data_root))
    if os.access(root, os.W_OK):
        return os.path.join(root, ".admpff-cache")
    digest = hashlib.sha1(root.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return os.path.join(os.path.expanduser("~"), ".cache", "admpff", digest)


def cache_images(paths: Sequence[str], cache_dir: str, name: str, contract: InputContract,
                 progress: bool = True) -> CachedImages:
    """Memory-mapped, resized images of ``paths`` under ``cache_dir`` (built once, then reused).

    The file name holds the input size and a hash of the path list, so different splits (trials,
    held-out ids) get their own caches instead of rebuilding each other's.
    """
    digest = hashlib.sha1("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    file = os.path.join(cache_dir, f"{name}-{contract.height}x{contract.width}-{digest}.npy")
    cached = build_image_cache(list(paths), file, contract, progress=progress)
    if cached.num_skipped:
        log.warning("%s: skipped %d unreadable image(s) of %d", name, cached.num_skipped, len(paths))
    return cached


@torch.inference_mode()
def extract_features(model: torch.nn.Module, images: np.ndarray, modality: int, *, batch_size: int = 64,
                     device: str | torch.device = "cpu", contract: InputContract | None = None,
                     progress: bool = False, desc: str = "features") -> np.ndarray:
    """Embeddings (float32, L2-normalised by the model) of ``N x H x W x 3`` uint8 images of one modality."""
    from tqdm import tqdm

    model.eval()
    contract = contract or model.contract()
    normalize = Normalizer(contract).to(device)
    n = len(images)
    out = None
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        chunk = np.array(images[start:start + batch_size])  # a writable copy of the memmap rows
        x = torch.from_numpy(chunk).to(device, non_blocking=True).permute(0, 3, 1, 2)
        mod = torch.full((x.shape[0],), int(modality), dtype=torch.long, device=device)
        emb = model(normalize(x), mod).float().cpu().numpy()
        if out is None:
            out = np.empty((n, emb.shape[1]), np.float32)
        out[start:start + len(emb)] = emb
    if out is None:
        raise DatasetError("no images to extract features from")
    return out


def embed_split(model, split: ReIDSplit, modality: int, cache_dir: str, name: str, *, contract: InputContract,
                batch_size: int = 64, device="cpu", progress: bool = True):
    """Cache a split's images and embed them; returns (features, pids, camids, paths) of the readable images."""
    cached = cache_images(split.paths, cache_dir, name, contract, progress=progress)
    feats = extract_features(model, cached.images, modality, batch_size=batch_size, device=device,
                             contract=contract, progress=progress, desc=name)
    return feats, cached.select(split.pids), cached.select(split.camids), cached.paths


def evaluate_sysu(model, reader, *, mode: str = "all", trials: int = 10, cache_dir: str, contract: InputContract,
                  batch_size: int = 64, device="cpu", progress: bool = True, name: str = "sysu") -> dict:
    """SYSU-MM01 protocol over ``trials`` galleries (0..trials-1) of ``reader`` (a SYSUMM01 or its held-out split).

    Returns ``{"summary": summarize(...), "trials": [per-trial metrics], "mode", "num_query", "num_gallery"}``.
    """
    query = reader.query(mode)
    q_feats, q_pids, q_cams, _ = embed_split(model, query, INFRARED, cache_dir, f"{name}-query-{mode}",
                                             contract=contract, batch_size=batch_size, device=device,
                                             progress=progress)
    galleries = [reader.gallery(mode, trial) for trial in range(trials)]
    union = list(dict.fromkeys(p for g in galleries for p in g.paths))
    cached = cache_images(union, cache_dir, f"{name}-gallery-{mode}", contract, progress=progress)
    g_all = extract_features(model, cached.images, VISIBLE, batch_size=batch_size, device=device,
                             contract=contract, progress=progress, desc=f"{name}-gallery")
    row_of = {p: i for i, p in enumerate(cached.paths)}
    results, per_trial, sizes = [], [], []
    for trial, gallery in enumerate(galleries):
        keep = [i for i, p in enumerate(gallery.paths) if p in row_of]
        rows = [row_of[gallery.paths[i]] for i in keep]
        distmat = compute_distmat(q_feats, g_all[rows])
        cmc, mAP, mINP = eval_sysu(distmat, q_pids, gallery.pids[keep], q_cams, gallery.camids[keep])
        results.append((cmc, mAP, mINP))
        per_trial.append({"trial": trial, **_metrics(cmc, mAP, mINP), "num_gallery": len(rows)})
        sizes.append(len(rows))
    return {"summary": summarize(results), "trials": per_trial, "mode": mode, "num_query": int(len(q_pids)),
            "num_gallery": sizes}


def evaluate_regdb(model, reader, *, tvsearch: bool = False, cache_dir: str, contract: InputContract,
                   batch_size: int = 64, device="cpu", progress: bool = True, name: str = "regdb") -> dict:
    """RegDB protocol for one trial: visible->thermal, or thermal->visible with ``tvsearch``."""
    mode = "thermal_to_visible" if tvsearch else "visible_to_thermal"
    query, gallery = reader.test(mode)
    q_mod, g_mod = (INFRARED, VISIBLE) if tvsearch else (VISIBLE, INFRARED)
    tag = f"{name}-t{reader.trial}"
    q_feats, q_pids, _, _ = embed_split(model, query, q_mod, cache_dir, f"{tag}-{'thermal' if tvsearch else 'visible'}",
                                        contract=contract, batch_size=batch_size, device=device, progress=progress)
    g_feats, g_pids, _, _ = embed_split(model, gallery, g_mod, cache_dir, f"{tag}-{'visible' if tvsearch else 'thermal'}",
                                        contract=contract, batch_size=batch_size, device=device, progress=progress)
    cmc, mAP, mINP = eval_regdb(compute_distmat(q_feats, g_feats), q_pids, g_pids)
    return {"summary": summarize([(cmc, mAP, mINP)]),
            "trials": [{"trial": reader.trial, **_metrics(cmc, mAP, mINP)}],
            "mode": mode, "num_query": int(len(q_pids)), "num_gallery": [int(len(g_pids))]}


def _metrics(cmc, mAP, mINP) -> dict:
    return {"rank1": 100.0 * float(cmc[0]), "rank5": 100.0 * float(cmc[4]), "rank10": 100.0 * float(cmc[9]),
            "rank20": 100.0 * float(cmc[19]), "mAP": 100.0 * mAP, "mINP": 100.0 * mINP}
