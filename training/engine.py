"""The training loop of ADMPFF-Net (HcTri's recipe with the paper's eq. 11 schedule).

One process::

    admpff-train --dataset sysu --data /data/SYSU-MM01 --out runs/sysu

Several GPUs on one machine (DDP; rank 0 writes logs and checkpoints)::

    torchrun --standalone --nproc_per_node=4 -m admpff.training.cli_train --dataset sysu --data ... [--sync-bn]

Several machines (run on each node; nothing here is home-made, torchrun does the rendezvous)::

    torchrun --nnodes=2 --node_rank=R --nproc_per_node=4 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 -m admpff.training.cli_train --dataset sysu --data ...

Under torchrun (``WORLD_SIZE`` > 1) the model is wrapped in ``DistributedDataParallel``, each rank
trains on a disjoint share of every epoch's batches (see ``sampler.py``), so an epoch covers the same
data as one process and the global batch is ``WORLD_SIZE x 2PK`` images; learning rates are not
rescaled (scale ``--lr`` yourself if you change the global batch).  Mixed precision (``--amp``) and
``cudnn.benchmark`` are used on CUDA only.

Every epoch ends with an atomic ``last.pt`` (see ``checkpoint.py``); ``--resume last.pt`` restores the
model, optimiser, schedule, GradScaler, sampler and the python/numpy/torch RNGs and continues with the
next epoch, reproducing an uninterrupted run (bit-exactly on CPU with ``--workers 0``; the sampler and
augmentation draws do not depend on the worker count, only cuDNN autotuning can differ on GPU).

Model selection: the reported model is the LAST epoch.  SYSU-MM01 has no validation split and HcTri
picks its best epoch on the test set, which inflates results; ``--heldout-ids N`` holds N training
identities out instead, evaluates on them with the test protocol, and keeps the best epoch (mAP)
as ``best.pt``.  Without it, ``--eval-every`` reports test-protocol numbers for monitoring only.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from admpff.runtime.contract import INFRARED, VISIBLE, InputContract, package_version

from .checkpoint import (FORMAT, FORMAT_VERSION, CheckpointError, atomic_torch_save, capture_rng_state,
                         restore_rng_state)
from .config import TrainConfig
from .datasets.cache import CachedImages
from .datasets.common import DatasetError, make_split
from .features import cache_images, default_cache_dir, evaluate_regdb, evaluate_sysu
from .losses import MGJLoss
from .model import ADMPFFNet, build_model, check_input_size
from .sampler import IdentitySampler
from .transforms import Normalizer, TrainAugment

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad data, diverged loss, incompatible resume)."""


# -- learning-rate schedule ---------------------------------------------------------------------
class WarmupMultiStep:
    """Eq. (11) as a factor of the base lr: (e+1)/W for e < W, then ``gamma`` per milestone passed.

    With W=10, milestones (20, 50), gamma 0.1 and lr 0.1: 0.01, 0.02, ... 0.1 for epochs 0-9, 0.1 for
    10-19, 0.01 for 20-49 and 0.001 from 50 on.  A callable object (not a lambda) so ``LambdaLR``
    saves it in its state_dict.
    """

    def __init__(self, warmup_epochs: int = 10, milestones=(20, 50), gamma: float = 0.1):
        self.warmup_epochs = int(warmup_epochs)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        return self.gamma ** sum(epoch >= m for m in self.milestones)


def build_optimizer(model: ADMPFFNet, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD, nesterov, two groups: the head at ``lr``, the pretrained backbone at ``lr * backbone_lr_mult``."""
    groups = [{"params": list(model.backbone_parameters()), "lr": config.lr * config.backbone_lr_mult,
               "name": "backbone"},
              {"params": list(model.head_parameters()), "lr": config.lr, "name": "head"}]
    covered = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in model.parameters())
    if covered != total:
        raise TrainingError(f"backbone + head parameters ({covered}) do not cover the model ({total})")
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov and config.momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, milestones = config.schedule()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupMultiStep(warmup, milestones, config.gamma))


# -- data -----------------------------------------------------------------------------------------
class CrossModalityDataset(Dataset):
    """HcTri's paired data set: item ``(v, t, seed)`` -> ``(img_v, img_t, label_v, label_t)``.

    Images come from the memory-mapped caches (uint8, already at the contract's size) and are
    augmented with a generator seeded by ``seed`` (from the sampler), returned as uint8 CHW tensors;
    normalisation happens on the device.  The memmaps are reopened lazily in each worker process, so
    nothing large is pickled whatever the multiprocessing start method.
    """

    def __init__(self, visible: CachedImages, visible_labels, infrared: CachedImages, infrared_labels,
                 augment: Callable):
        self.visible_path, self.infrared_path = visible.cache_path, infrared.cache_path
        self.visible_labels = np.asarray(visible_labels, np.int64)
        self.infrared_labels = np.asarray(infrared_labels, np.int64)
        self.augment = augment
        self._arrays = None

    def _images(self):
        if self._arrays is None:
            self._arrays = (np.load(self.visible_path, mmap_mode="r"), np.load(self.infrared_path, mmap_mode="r"))
        return self._arrays

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return max(len(self.visible_labels), len(self.infrared_labels))

    def __getitem__(self, item):
        v, t, seed = item
        visible, infrared = self._images()
        rng = np.random.default_rng(int(seed))
        img_v = self.augment(visible[v], rng)
        img_t = self.augment(infrared[t], rng)
        return img_v, img_t, int(self.visible_labels[v]), int(self.infrared_labels[t])


class RegDBHeldout:
    """RegDB training ids split into train / validation (RegDB's own test ids stay untouched).

    ``test(mode)`` follows the RegDB protocol on the held-out ids' training images.
    """

    def __init__(self, reader, count: int, seed: int = 0):
        ids = sorted({lab for _, lab, _ in reader.train_visible})
        if not 0 < count < len(ids):
            raise DatasetError(f"--heldout-ids {count}: RegDB trial {reader.trial} has {len(ids)} training ids")
        held = set(random.Random(seed).sample(ids, count))
        keep = [i for i in ids if i not in held]
        relabel = {old: new for new, old in enumerate(keep)}
        self.trial = reader.trial
        self.train_visible = [(p, relabel[l], c) for p, l, c in reader.train_visible if l in relabel]
        self.train_infrared = [(p, relabel[l], c) for p, l, c in reader.train_infrared if l in relabel]
        self.num_classes = len(keep)
        self.heldout_ids = sorted(held)
        self._visible = make_split([r for r in reader.train_visible if r[1] in held])
        self._thermal = make_split([r for r in reader.train_infrared if r[1] in held])

    def test(self, mode: str = "visible_to_thermal"):
        if mode == "visible_to_thermal":
            return self._visible, self._thermal
        return self._thermal, self._visible


@dataclass
class TrainingData:
    visible: CachedImages
    visible_labels: np.ndarray
    infrared: CachedImages
    infrared_labels: np.ndarray
    num_classes: int
    eval_reader: Any                 # what evaluation queries: held-out split or the test protocol
    eval_is_validation: bool
    info: dict = field(default_factory=dict)


def _drop_one_modality_ids(v_labels: np.ndarray, t_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Masks keeping only identities present in both modalities (after unreadable images were skipped)."""
    both = set(v_labels.tolist()) & set(t_labels.tolist())
    dropped = sorted((set(v_labels.tolist()) | set(t_labels.tolist())) - both)
    return np.isin(v_labels, list(both)), np.isin(t_labels, list(both)), dropped


def prepare_data(config: TrainConfig, contract, *, progress: bool = True, dist_ctx=None) -> TrainingData:
    """Read the split lists, build (or reuse) the image caches; every data problem raises before training."""
    from .datasets.regdb import RegDB
    from .datasets.sysu import SYSUMM01

    if config.dataset == "sysu":
        reader = SYSUMM01(config.data)
        if config.heldout_ids:
            candidates = len(reader.pid2label)
            if not 0 < config.heldout_ids < candidates:
                raise DatasetError(f"--heldout-ids {config.heldout_ids}: SYSU-MM01 here has {candidates} "
                                   "training ids with infrared images")
            train = eval_reader = reader.heldout_split(config.heldout_ids / candidates, seed=config.seed)
        else:
            train = eval_reader = reader
    else:
        reader = RegDB(config.data, config.trial)
        if config.heldout_ids:
            train = eval_reader = RegDBHeldout(reader, config.heldout_ids, seed=config.seed)
        else:
            train = eval_reader = reader
    if not train.train_visible or not train.train_infrared:
        raise DatasetError(f"{config.dataset}: the training identity list is empty")

    cache_dir = config.cache_dir or default_cache_dir(config.data)
    tag = f"{config.dataset}" + (f"-t{config.trial}" if config.dataset == "regdb" else "")
    main = dist_ctx is None or dist_ctx.is_main
    caches = {}
    # rank 0 builds the caches, the others wait and then open them (no concurrent writers)
    for turn in ((True,) if dist_ctx is None or not dist_ctx.enabled else (True, False)):
        if turn == main:
            caches["v"] = cache_images([p for p, _, _ in train.train_visible], cache_dir, f"{tag}-train-visible",
                                       contract, progress=progress and main)
            caches["t"] = cache_images([p for p, _, _ in train.train_infrared], cache_dir, f"{tag}-train-infrared",
                                       contract, progress=progress and main)
        if dist_ctx is not None and dist_ctx.enabled:
            dist_ctx.barrier()
    v_labels = caches["v"].select([l for _, l, _ in train.train_visible])
    t_labels = caches["t"].select([l for _, l, _ in train.train_infrared])
    keep_v, keep_t, dropped = _drop_one_modality_ids(v_labels, t_labels)
    if dropped:
        log.warning("%d identities lost all images of one modality (unreadable files) and are not trained on: %s",
                    len(dropped), dropped[:10])
        if not keep_v.all() or not keep_t.all():
            raise DatasetError(f"{len(dropped)} identities have images in only one modality after skipping "
                               "unreadable files; fix or remove those images")
    if len(set(v_labels.tolist())) < 2:
        raise DatasetError("training needs at least two identities with visible and infrared images")
    info = {"name": config.dataset, "num_classes": int(train.num_classes), "num_visible": int(len(v_labels)),
            "num_infrared": int(len(t_labels)), "skipped_visible": caches["v"].num_skipped,
            "skipped_infrared": caches["t"].num_skipped, "heldout_ids": int(config.heldout_ids),
            "trial": int(config.trial) if config.dataset == "regdb" else None, "cache_dir": cache_dir}
    return TrainingData(caches["v"], v_labels, caches["t"], t_labels, int(train.num_classes), eval_reader,
                        bool(config.heldout_ids), info)


# -- distributed ----------------------------------------------------------------------------------
class DistContext:
    """torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); a no-op for one process."""

    def __init__(self, device_arg: str = "auto"):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        if device_arg == "auto":
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        if device_arg.startswith("cuda"):
            if not torch.cuda.is_available():
                raise TrainingError("--device cuda was asked for, but CUDA is not available")
            if self.enabled or device_arg == "cuda":
                device_arg = f"cuda:{self.local_rank if self.enabled else torch.cuda.current_device()}"
            torch.cuda.set_device(torch.device(device_arg))
        self.device = torch.device(device_arg)
        self._initialised_here = False
        if self.enabled:
            import torch.distributed as dist
            if not dist.is_initialized():
                backend = "nccl" if self.device.type == "cuda" else "gloo"
                dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
                self._initialised_here = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        if self._initialised_here:
            import torch.distributed as dist
            dist.destroy_process_group()
            self._initialised_here = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# -- logging ----------------------------------------------------------------------------------------
class RunLogger:
    """JSON lines (``train_log.jsonl``, appended, flushed per record) and optional TensorBoard."""

    def __init__(self, out_dir: str, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(out_dir, LOG_FILE)
        self.writer = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(out_dir, "tb"))
            except Exception as exc:  # tensorboard is optional
                log.warning("TensorBoard logging disabled (%s)", str(exc).splitlines()[0] if str(exc) else exc)

    def record(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.writer is not None:
            self.writer.close()


# -- the trainer ------------------------------------------------------------------------------------
class Trainer:
    """Builds everything from a resolved :class:`TrainConfig` and runs the epochs.

    ``Trainer(config)`` reads the data (errors raise here, before any training), builds the model
    (ImageNet weights per ``config.pretrained``), optimiser, eq. (11) schedule, sampler and loader.
    ``Trainer(config, resume=ckpt_dict)`` restores a checkpoint's full training state.
    ``fit()`` trains up to ``config.epochs`` (or ``fit(until_epoch=n)``: stop after n completed
    epochs), saving ``last.pt`` every epoch; it returns a summary dict.  ``train_epoch(e)`` runs one
    epoch and returns its mean loss terms; ``evaluate()`` runs the held-out or test protocol;
    ``state_dict(epoch)`` is the checkpoint dict; ``save(epoch)`` writes it.
    """

    def __init__(self, config: TrainConfig, *, resume: dict | None = None, progress: bool | None = None):
        self.config = config
        self.progress = config.progress if progress is None else progress
        self.dist = DistContext(config.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.cuda = self.device.type == "cuda"
        self.amp = bool(config.amp and self.cuda)
        if config.amp and not self.cuda:
            log.warning("--amp is for CUDA only; training in float32 on %s", self.device)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        seed_everything(config.seed)

        # input size first (cheap), then the data: every data error is raised before training starts
        check_input_size(config.height, config.width, config.en_rows)
        self.contract = InputContract(height=config.height, width=config.width)
        self.data = prepare_data(config, self.contract, progress=self.progress, dist_ctx=self.dist)
        if resume is not None:
            stored = int(resume["config"]["model"]["num_classes"])
            if stored != self.data.num_classes:
                raise TrainingError(f"the checkpoint was trained on {stored} identities but the data now give "
                                    f"{self.data.num_classes}: not the same data set / split")

        torch.manual_seed(config.seed)
        # resuming: no ImageNet look-up, the checkpoint's weights replace them anyway
        self.model_config = config.model_config(self.data.num_classes, with_pretrained=resume is None)
        self.model = build_model(self.model_config)
        self.contract = self.model.contract()
        self.model.to(self.device)
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            if config.sync_bn and not self.cuda:
                log.warning("--sync-bn needs CUDA (SyncBatchNorm works only with GPU modules); ignored on %s",
                            self.device)
            elif config.sync_bn:
                self.train_model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                self.model = self.train_model
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.cuda else None)
        elif config.sync_bn:
            log.warning("--sync-bn has no effect without torchrun (one process)")

        self.normalize = Normalizer(self.contract).to(self.device)
        self.criterion = MGJLoss(config.alpha, config.beta, config.margin, config.label_smoothing, config.triplet_weight,
                                 config.triplet_norm_feat)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp) if self.cuda else None
        self.sampler = IdentitySampler(self.data.visible_labels, self.data.infrared_labels, config.batch_p,
                                       config.batch_k, seed=config.seed,
                                       num_replicas=self.dist.world_size, rank=self.dist.rank,
                                       max_batches=config.max_steps_per_epoch)
        augment = TrainAugment(pad=config.pad, flip=True, channel_aug=config.channel_aug)
        self.dataset = CrossModalityDataset(self.data.visible, self.data.visible_labels, self.data.infrared,
                                            self.data.infrared_labels, augment)
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=config.workers,
                                 pin_memory=self.cuda, persistent_workers=config.workers > 0)
        self.start_epoch = 0
        self.global_step = 0
        self.best: dict = {"metric": "mAP", "value": None, "epoch": None}
        self.last_metrics: dict = {}
        if resume is not None:
            self.load_state_dict(resume)
        self.logger = RunLogger(config.out, tensorboard=config.tensorboard, enabled=self.is_main)

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self, epoch: int) -> dict:
        """The checkpoint dict after ``epoch`` completed epochs (format in ``checkpoint.py``)."""
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "admpff_version": package_version(),
            "config": {"model": self.model_config.to_dict() | {"pretrained": None},
                       "train": self.config.to_dict(), "contract": self.contract.to_dict(),
                       "dataset": dict(self.data.info)},
            "model": cpu(self.model.state_dict()),
            "epoch": int(epoch),
            "global_step": int(self.global_step),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if (self.scaler is not None and self.amp) else None,
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng_state(),
            "metrics": dict(self.last_metrics),
            "best": dict(self.best),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        try:
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint does not fit this model/optimiser: {first[:200]}") from None
        if self.scaler is not None and self.amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.sampler.load_state_dict({**ckpt["sampler"], "seed": ckpt["sampler"].get("seed", self.config.seed)})
        restore_rng_state(ckpt["rng"])
        self.start_epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt.get("global_step", 0))
        self.best = dict(ckpt.get("best") or self.best)
        self.last_metrics = dict(ckpt.get("metrics") or {})

    def save(self, epoch: int, improved: bool = False) -> dict:
        """Write ``last.pt`` (always), ``best.pt`` (when ``improved``), ``epoch_XXX.pt`` (``--save-every``)."""
        paths = {}
        if not self.is_main:
            return paths
        state = self.state_dict(epoch)
        paths["last"] = atomic_torch_save(state, os.path.join(self.config.out, "last.pt"))
        if improved:
            paths["best"] = atomic_torch_save(state, os.path.join(self.config.out, "best.pt"))
        if self.config.save_every and epoch % self.config.save_every == 0:
            paths["epoch"] = atomic_torch_save(state, os.path.join(self.config.out, f"epoch_{epoch:03d}.pt"))
        return paths

    # -- loop ---------------------------------------------------------------------------------------
    def current_lrs(self) -> dict:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def train_epoch(self, epoch: int) -> dict:
        """One epoch (0-based index ``epoch``); returns mean loss terms, lr and throughput."""
        from tqdm import tqdm

        config = self.config
        self.train_model.train()
        self.sampler.set_epoch(epoch)
        lrs = self.current_lrs()
        sums: torch.Tensor | None = None
        names: list[str] = []
        steps, images, t0 = 0, 0, time.perf_counter()
        bar = tqdm(total=len(self.sampler), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not (self.progress and self.is_main), dynamic_ncols=True, leave=False)
        for img_v, img_t, lab_v, lab_t in self.loader:
            img_v = self.normalize(img_v.to(self.device, non_blocking=True))
            img_t = self.normalize(img_t.to(self.device, non_blocking=True))
            labels = torch.cat([lab_v, lab_t]).to(self.device, non_blocking=True)
            modality = torch.cat([torch.full((len(lab_v),), VISIBLE, dtype=torch.long),
                                  torch.full((len(lab_t),), INFRARED, dtype=torch.long)]).to(self.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp) if self.cuda \
                    else contextlib.nullcontext():
                output = self.train_model(img_v, img_t)
            if self.amp:  # the loss (distances, softmax) in float32
                output = {kind: {k: v.float() for k, v in d.items()} for kind, d in output.items()}
            loss, terms = self.criterion(output, labels, modality)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {steps + 1}; "
                                    "lower --lr (or use --amp off)")
            self.optimizer.zero_grad(set_to_none=True)
            if self.amp:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            if sums is None:
                names = ["loss"] + list(terms)
                sums = torch.zeros(len(names), dtype=torch.float64, device=self.device)
            sums += torch.stack([loss.detach()] + [t.detach() for t in terms.values()]).double()
            steps += 1
            images += img_v.shape[0] + img_t.shape[0]
            self.global_step += 1
            if self.is_main and (steps % max(1, config.log_every) == 0 or steps == len(self.sampler)):
                running = float(sums[0]) / steps
                bar.set_postfix(loss=f"{running:.3f}", lr=f"{lrs.get('head', 0):.2e}")
                self.logger.scalars("train_step", {"loss": float(loss.detach())}, self.global_step)
            bar.update(1)
        bar.close()
        if sums is None:
            raise TrainingError("the epoch had no batches")
        if self.dist.enabled:  # average the per-rank means
            import torch.distributed as dist
            dist.all_reduce(sums)
            sums /= self.dist.world_size
        elapsed = time.perf_counter() - t0
        means = {n: float(v) / steps for n, v in zip(names, sums.tolist())}
        return {"loss": means.pop("loss"), "terms": means, "lr": lrs, "steps": steps,
                "images_per_s": images * self.dist.world_size / max(elapsed, 1e-9), "seconds": elapsed}

    def evaluate(self) -> dict:
        """Held-out validation (``--heldout-ids``) or the test protocol; rank 0 only.  Percent metrics."""
        config = self.config
        cache_dir = config.cache_dir or default_cache_dir(config.data)
        kwargs = dict(cache_dir=cache_dir, contract=self.contract, batch_size=2 * config.batch_p * config.batch_k,
                      device=self.device, progress=False)
        tag = "val" if self.data.eval_is_validation else "test"
        if config.dataset == "sysu":
            result = evaluate_sysu(self.model, self.data.eval_reader, mode=config.eval_mode,
                                   trials=max(1, config.eval_trials), name=f"sysu-{tag}", **kwargs)
        else:
            result = evaluate_regdb(self.model, self.data.eval_reader, name=f"regdb-{tag}", **kwargs)
        self.model.train()
        summary = {k: v for k, v in result["summary"].items() if k != "cmc"}
        return {"split": "validation" if self.data.eval_is_validation else "test", **summary}

    def collapsed(self, terms: dict, tolerance: float = 0.01) -> bool:
        """True when every triplet term sits at the margin: all centres coincide (dead stripe features)."""
        tri = [v for k, v in terms.items() if k.startswith("tri/")]
        margin = self.config.margin
        return bool(tri) and margin > 0 and all(abs(v - margin) <= tolerance * margin for v in tri)

    def _should_eval(self, epoch_done: int) -> bool:
        every = self.config.eval_every
        if every and epoch_done % every == 0:
            return True
        return epoch_done == self.config.epochs and (bool(every) or self.data.eval_is_validation)

    def fit(self, until_epoch: int | None = None) -> dict:
        """Train from ``start_epoch`` to ``config.epochs`` (or stop after ``until_epoch`` completed epochs)."""
        config = self.config
        end = config.epochs if until_epoch is None else min(config.epochs, int(until_epoch))
        if self.is_main:
            self.logger.record({"event": "start", "time": time.time(), "start_epoch": self.start_epoch,
                                "epochs": config.epochs, "world_size": self.dist.world_size,
                                "device": str(self.device), "dataset": self.data.info,
                                "config": config.to_dict(), "model": self.model_config.to_dict()})
            log.info("training %s: %d classes, %d visible + %d infrared images, %d steps/epoch, epochs %d..%d",
                     config.dataset, self.data.num_classes, len(self.data.visible_labels),
                     len(self.data.infrared_labels), len(self.sampler), self.start_epoch + 1, end)
        history = []
        try:
            for epoch in range(self.start_epoch, end):
                stats = self.train_epoch(epoch)
                self.scheduler.step()
                done = epoch + 1
                record = {"event": "epoch", "epoch": done, "time": time.time(), **stats}
                if self.collapsed(stats["terms"]):
                    record["collapsed"] = True
                    if self.is_main:
                        log.warning("epoch %d: every hetero-center triplet term equals the margin (%.2f): the stripe "
                                    "features have collapsed to a constant (HcTri issue #27, 'TLoss stuck'); start from "
                                    "pretrained weights, or from random weights use --triplet-norm-feat with one "
                                    "learning rate (--backbone-lr-mult 1; configs/synthetic.yaml has the recipe)",
                                    done, config.margin)
                improved = False
                if self._should_eval(done):
                    if self.is_main:
                        metrics = self.evaluate()
                        self.last_metrics = {"epoch": done, **metrics}
                        record["eval"] = metrics
                        if self.data.eval_is_validation:
                            value = metrics.get(self.best["metric"])
                            if value is not None and (self.best["value"] is None or value > self.best["value"]):
                                self.best = {"metric": self.best["metric"], "value": value, "epoch": done}
                                improved = True
                    self.dist.barrier()
                if self.is_main:
                    self.logger.record(record)
                    self.logger.scalars("train", {"loss": stats["loss"], **stats["terms"],
                                                  "images_per_s": stats["images_per_s"]}, done)
                    self.logger.scalars("lr", stats["lr"], done)
                    if "eval" in record:
                        self.logger.scalars(record["eval"]["split"], record["eval"], done)
                    self.save(done, improved=improved)
                    line = f"epoch {done}/{config.epochs} loss {stats['loss']:.4f} lr {stats['lr'].get('head', 0):.2e} " \
                           f"{stats['images_per_s']:.1f} img/s"
                    if "eval" in record:
                        e = record["eval"]
                        line += f" | {e['split']} R1 {e.get('rank1', 0):.2f} mAP {e['mAP']:.2f} mINP {e['mINP']:.2f}"
                    log.info(line)
                self.dist.barrier()
                self.start_epoch = done
                history.append(record)
        finally:
            if self.is_main:
                self.logger.record({"event": "stop", "time": time.time(), "epoch": self.start_epoch})
        return {"epochs_done": self.start_epoch, "history": history, "best": dict(self.best),
                "last_metrics": dict(self.last_metrics), "out": config.out}

    def close(self) -> None:
        self.logger.close()
        self.dist.close()
