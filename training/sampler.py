"""HcTri's cross-modality identity sampler, made deterministic and shardable across processes.

``utils.py: IdentitySampler`` of HcTri / AGW, per epoch:

* N = max(#visible, #infrared) training images, ``int(N / (P*K)) + 1`` batches;
* each batch: P identities drawn **without** replacement, then for each identity K visible and K
  infrared indices drawn **with** replacement.  The data set pairs the i-th visible index with the
  i-th infrared index, so a batch is ``[visible: id1 x K, id2 x K, ...] + [infrared: same order]``.

Differences (none changes the distribution of batches):

* the random stream is ``numpy.random.default_rng([seed, epoch])`` instead of the global numpy state,
  so an epoch's batches depend only on (seed, epoch): a resumed run replays them exactly;
* each sample also carries a 63-bit augmentation seed drawn from the same stream (see
  ``transforms.py``), so augmentation is reproducible whatever the number of loader workers;
* it is a *batch* sampler (yields lists), to be passed as ``DataLoader(batch_sampler=...)``;
* under ``torch.distributed`` the epoch's batches are padded to a multiple of the world size (extra
  batches drawn from the same stream) and rank r takes batches r, r + W, r + 2W, ...: the shares are
  disjoint, equally long (DDP needs that) and together cover the single-process epoch.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

#: one sampled pair: (visible index, infrared index, augmentation seed)
Pair = tuple[int, int, int]


class SamplerError(ValueError):
    """The labels cannot form cross-modality batches (e.g. an identity missing in one modality)."""


def _dist_info(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        try:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
                rank = dist.get_rank() if rank is None else rank
        except ImportError:  # pragma: no cover - torch is a training dependency
            pass
    num_replicas = 1 if num_replicas is None else int(num_replicas)
    rank = 0 if rank is None else int(rank)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"invalid distributed share: rank {rank} of {num_replicas}")
    return num_replicas, rank


class IdentitySampler:
    """Batch sampler yielding lists of ``(visible_idx, infrared_idx, aug_seed)``, P identities x K pairs.

    Args:
        visible_labels, infrared_labels: label of each visible / infrared training image.
        p, k: identities per batch and images per identity and modality (SYSU 6 x 8, RegDB 8 x 4).
        seed: base seed; the epoch is set with :meth:`set_epoch` (or the ``epoch`` argument).
        num_replicas, rank: distributed share (default: from ``torch.distributed`` if initialised).
        max_batches: cap on this rank's batches per epoch (short runs, ``--max-steps-per-epoch``).
    """

    def __init__(self, visible_labels: Sequence[int], infrared_labels: Sequence[int], p: int, k: int,
                 seed: int = 0, epoch: int = 0, num_replicas: int | None = None, rank: int | None = None,
                 max_batches: int | None = None):
        self.visible_labels = np.asarray(visible_labels, dtype=np.int64)
        self.infrared_labels = np.asarray(infrared_labels, dtype=np.int64)
        if p < 1 or k < 1:
            raise SamplerError(f"P and K must be positive, got P={p}, K={k}")
        if self.visible_labels.size == 0 or self.infrared_labels.size == 0:
            raise SamplerError("the sampler needs visible and infrared training images")
        vis_ids, ir_ids = set(self.visible_labels.tolist()), set(self.infrared_labels.tolist())
        if vis_ids != ir_ids:
            only_v, only_i = sorted(vis_ids - ir_ids), sorted(ir_ids - vis_ids)
            raise SamplerError(
                f"every identity needs images in both modalities: {len(only_v)} only visible (e.g. {only_v[:3]}), "
                f"{len(only_i)} only infrared (e.g. {only_i[:3]})")
        self.ids = np.asarray(sorted(vis_ids), dtype=np.int64)
        if p > self.ids.size:
            raise SamplerError(f"P={p} identities per batch, but only {self.ids.size} training identities")
        self.p, self.k, self.seed, self.epoch = int(p), int(k), int(seed), int(epoch)
        self.num_replicas, self.rank = _dist_info(num_replicas, rank)
        self.max_batches = None if max_batches is None else int(max_batches)
        self._visible_pos = {int(i): np.flatnonzero(self.visible_labels == i) for i in self.ids}
        self._infrared_pos = {int(i): np.flatnonzero(self.infrared_labels == i) for i in self.ids}

    # -- epoch structure -----------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Pairs per batch (the model sees twice as many images: P*K visible + P*K infrared)."""
        return self.p * self.k

    @property
    def batches_per_epoch(self) -> int:
        """HcTri's count for a single process: int(max(#V, #IR) / (P*K)) + 1."""
        n = max(self.visible_labels.size, self.infrared_labels.size)
        return int(n / self.batch_size) + 1

    def _total_batches(self) -> int:
        return math.ceil(self.batches_per_epoch / self.num_replicas) * self.num_replicas

    def __len__(self) -> int:
        mine = self._total_batches() // self.num_replicas
        return mine if self.max_batches is None else min(mine, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """Everything the batch stream depends on (the stream itself is a function of these)."""
        return {"seed": self.seed, "epoch": self.epoch, "p": self.p, "k": self.k,
                "num_replicas": self.num_replicas, "max_batches": self.max_batches}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    # -- drawing -------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int | None = None) -> list[list[Pair]]:
        """All batches of an epoch for every rank (before sharding)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for _ in range(self._total_batches()):
            chosen = rng.choice(self.ids, self.p, replace=False)
            batch: list[Pair] = []
            for pid in chosen.tolist():
                v = rng.choice(self._visible_pos[pid], self.k, replace=True)
                t = rng.choice(self._infrared_pos[pid], self.k, replace=True)
                seeds = rng.integers(0, 2 ** 63 - 1, size=self.k, dtype=np.int64)
                batch.extend(zip(v.tolist(), t.tolist(), seeds.tolist()))
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[Pair]]:
        mine = self.epoch_batches()[self.rank::self.num_replicas]
        if self.max_batches is not None:
            mine = mine[:self.max_batches]
        return iter(mine)
