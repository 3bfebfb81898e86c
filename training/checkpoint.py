"""Training checkpoints: format, atomic writes, strict reading, RNG capture.

A checkpoint is a plain dict written with ``torch.save`` and readable with ``weights_only=True``
(only tensors, numbers, strings, lists, tuples and dicts: no pickled classes)::

    format            "admpff-checkpoint"
    format_version    1
    admpff_version    package version that wrote it
    config            {"model": ModelConfig.to_dict()  (pretrained=None: the weights are here),
                       "train": TrainConfig.to_dict()  (the resolved training settings),
                       "contract": InputContract.to_dict(),
                       "dataset": {"name", "num_classes", "num_visible", "num_infrared", ...}}
    model             state_dict of the bare model (no DDP "module." prefix), CPU tensors
    epoch             number of COMPLETED epochs (= the 0-based epoch a resume starts with)
    optimizer         optimizer state_dict
    scheduler         LambdaLR state_dict (per-epoch schedule of eq. 11)
    scaler            GradScaler state_dict, or None without AMP
    sampler           IdentitySampler.state_dict() (seed, epoch, P, K, ...)
    rng               {"python", "numpy", "torch", "cuda"} generator states
    metrics           last evaluation (or {}), and "best": best validation value so far
    global_step       optimiser steps done

``build_model(ckpt["config"]["model"])`` + ``load_state_dict(ckpt["model"])`` rebuilds the trained
network from the file alone.

Writes are atomic: ``torch.save`` into a temporary file in the same directory, ``fsync``, then
``os.replace`` (and an ``fsync`` of the directory), so a run killed at any instant leaves either the
previous ``last.pt`` or the new one, never a torn file; a crash loses at most the current epoch.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from admpff.runtime.atomic import atomic_open

FORMAT = "admpff-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "config", "model", "epoch", "optimizer", "scheduler", "sampler", "rng",
                 "admpff_version")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, corrupt or not an admpff training checkpoint."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save(obj)`` to ``path`` via temp file + fsync + ``os.replace`` in the same directory."""
    with atomic_open(path) as f:
        torch.save(obj, f)
    return os.fspath(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    require_training_state: bool = True) -> dict:
    """Read and check a checkpoint; any problem is a :class:`CheckpointError` with a one-line message."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or not a torch file): {first[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an admpff training checkpoint")
    keys = REQUIRED_KEYS if require_training_state else ("config", "model")
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if not isinstance(ckpt["config"], dict) or "model" not in ckpt["config"]:
        raise CheckpointError(f"checkpoint {path} has no model configuration")
    if int(ckpt.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt['format_version']}, newer than this "
                              f"admpff understands ({FORMAT_VERSION})")
    return ckpt


def build_model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu"):
    """The trained network (eval mode) from a checkpoint dict; strict weight loading."""
    from admpff.training.model import build_model
    model = build_model(ckpt["config"]["model"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint weights do not fit its own model configuration: {first}") from None
    return model.to(device).eval()


# -- RNG states (weights_only-safe: numpy's state is stored as a tensor, not an ndarray) -----------
def capture_rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    if not state:
        return
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # a different number of GPUs: not restorable, not fatal
            pass
