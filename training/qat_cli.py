"""``admpff-train --qat-from CHECKPOINT``: the command-line side of quantization-aware fine-tuning.

Kept apart from :mod:`admpff.training.qat` so that ``admpff-train --help`` does not import torch.
``admpff-train --resume OUT/last.pt`` of a QAT run needs no QAT flag: the checkpoint says it is one.
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

#: Settings a QAT run changes from its source run's (flags given on the command line still win):
#: a short run at a small constant learning rate.  Measured on a briefly trained model: with the MGJ loss
#: the weights drift (cosine to the FP32 model 0.85 after 8 steps at lr 2e-4, 0.80 at 1e-5) and INT8 ends
#: up worse than post-training calibration, while the calibrated fake-quantized model before any step is
#: already better than it; so the default objective is the distance to the FP32 embedding alone.
#: With Adam, conv weights at 1e-4 wrecked the demo's ResNet-50 (cosine 0.93 after 3 steps), so by default
#: the weights stay as trained (``backbone_lr_mult`` 0) and the folded-BN biases and the activation scales
#: learn (``--qat-bias-lr``, ``--qat-scale-lr``); ``--backbone-lr-mult 1`` trains the weights at ``--lr``.
QAT_DEFAULTS = {"epochs": 2, "lr": 1e-5, "backbone_lr_mult": 0.0, "warmup_epochs": 0, "milestones": [],
                "scale_schedule": False, "eval_every": 0}


def add_qat_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("quantization-aware fine-tuning (QAT)")
    g.add_argument("--qat-from", dest="qat_from", metavar="CHECKPOINT",
                   help="fine-tune this FP32 checkpoint with INT8 fake quantization (TensorRT's Q/DQ scheme); "
                        "the run starts from its settings, 2 epochs, conv weights frozen (--backbone-lr-mult 0; "
                        "1 trains them at --lr, default 1e-5), output OUT/qat beside it; "
                        "admpff-export --int8 on the result writes the Q/DQ file with the learned scales")
    g.add_argument("--qat-calib-samples", dest="qat_calib_samples", type=int, default=256, metavar="N",
                   help="training images that set the initial activation scales (default 256)")
    g.add_argument("--qat-distill", dest="qat_distill", type=float, default=1.0, metavar="W",
                   help="weight of the cosine distance between the fake-quantized embedding and the FP32 source "
                        "model's (default 1)")
    g.add_argument("--qat-scale-lr", dest="qat_scale_lr", type=float, default=None, metavar="LR",
                   help="Adam learning rate of the activation scales, relative to each calibrated scale "
                        "(default 1e-3: 0.1%% a step; 0 freezes them)")
    g.add_argument("--qat-bias-lr", dest="qat_bias_lr", type=float, default=None, metavar="LR",
                   help="Adam learning rate of the folded-BN biases (default 1e-3; 0 freezes them); the conv "
                        "weights learn at --lr x --backbone-lr-mult")
    g.add_argument("--qat-calib", dest="qat_calib", type=_calib_method, default=None, metavar="mse|P",
                   help="how the initial activation scales are set: 'mse' (default: the clipping value with the "
                        "least int8 error, per batch) or a |activation| percentile P such as 99.999 (100 = max)")
    g.add_argument("--qat-equalize", dest="qat_equalize", type=float, default=None, metavar="ALPHA",
                   help="before calibrating, even out the channels inside residual blocks and along the residual "
                        "streams (exact in float; SmoothQuant's migration strength, default 0.8; 0 turns it off)")
    g.add_argument("--qat-mgj-weight", dest="qat_mgj_weight", type=float, default=0.0, metavar="W",
                   help="weight of the MGJ loss (default 0: logged, not trained on; on a briefly trained model "
                        "it moved the weights to cosine 0.80 from the FP32 model even at lr 1e-5)")


def _calib_method(text: str):
    if text.strip().lower() == "mse":
        return "mse"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'mse' or a percentile, not {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"a percentile is in (0, 100], not {text}")
    return value


def split_qat_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Take the QAT flags out of ``argv``; the rest goes to the ordinary configuration parser."""
    parser = argparse.ArgumentParser(add_help=False)
    add_qat_arguments(parser)
    return parser.parse_known_args(list(argv))


def qat_source_config(source_path: str, argv: Sequence[str], overwrite: bool):
    """-> (source checkpoint dict, resolved config): the source run's settings, QAT's defaults, then flags."""
    from .checkpoint import load_checkpoint
    from .config import ConfigError, resolve_config

    source = load_checkpoint(source_path, require_training_state=False)
    if isinstance(source.get("qat"), dict):
        raise ConfigError(f"{source_path} is already a QAT checkpoint: continue it with --resume {source_path}")
    base = dict(source["config"].get("train", {}))
    base.update(QAT_DEFAULTS)
    base.update({"pretrained": "none", "resume": None,
                 "out": os.path.join(os.path.dirname(os.path.abspath(source_path)), "qat")})
    config, _ = resolve_config(argv, base=base)
    if os.path.isfile(os.path.join(config.out, "last.pt")) and not overwrite:
        raise ConfigError(f"{config.out} already holds a run (last.pt): continue it with --resume "
                          f"{os.path.join(config.out, 'last.pt')}, or pass --overwrite / another --out")
    return source, config


def make_trainer(config, *, resume: dict | None, source: dict | None, qat: argparse.Namespace):
    """An ordinary ``Trainer``, or a ``QATTrainer`` for ``--qat-from`` and for resuming a QAT checkpoint."""
    if source is None and not (resume is not None and isinstance(resume.get("qat"), dict)):
        from .engine import Trainer
        return Trainer(config, resume=resume)
    from .qat import QATTrainer
    if source is not None:
        from .qat import CALIB_METHOD, DEFAULT_BIAS_LR, DEFAULT_SCALE_LR, EQUALIZE_ALPHA
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return QATTrainer(config, source=source, source_path=qat.qat_from, calib_samples=qat.qat_calib_samples,
                          distill=qat.qat_distill, mgj_weight=qat.qat_mgj_weight,
                          scale_lr=pick(qat.qat_scale_lr, DEFAULT_SCALE_LR), bias_lr=pick(qat.qat_bias_lr, DEFAULT_BIAS_LR),
                          percentile=pick(qat.qat_calib, CALIB_METHOD),
                          equalize=pick(qat.qat_equalize, EQUALIZE_ALPHA))
    return QATTrainer(config, resume=resume)
