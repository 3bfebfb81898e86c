"""Training configuration: defaults < dataset preset < YAML file (``--config``) < command-line flags.

The *resolved* configuration (every field filled in, the learning-rate milestones after optional
scaling, the model's ``num_classes`` once the data are read) is what the trainer uses and what every
checkpoint stores, so a checkpoint alone says how it was made and rebuilds its model.

Dataset presets (Table 3 of the paper and HcTri's sampler settings):

=========  =====  ====  ===  ===
preset     alpha  beta   P    K
=========  =====  ====  ===  ===
sysu         1     1     6    8
regdb        3     6     8    4
=========  =====  ====  ===  ===

YAML files use the field names of :class:`TrainConfig` (``batch_p: 6`` or ``batch-p: 6``); a key the
config does not know is an error, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import argparse
import os
import textwrap
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

DATASETS = ("sysu", "regdb")

#: paper Table 3 (alpha, beta) and HcTri's P x K per data set
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "sysu": {"alpha": 1.0, "beta": 1.0, "batch_p": 6, "batch_k": 8},
    "regdb": {"alpha": 3.0, "beta": 6.0, "batch_p": 8, "batch_k": 4},
}

#: the paper's schedule, eq. (11), is defined for 80 epochs; --scale-schedule rescales to --epochs
PAPER_EPOCHS = 80


class ConfigError(ValueError):
    """An invalid or inconsistent configuration (reported as a one-line error by the CLIs)."""


@dataclass
class TrainConfig:
    """Every training setting.  Field names double as YAML keys and (with dashes) as CLI flags."""

    # data
    dataset: str = ""
    data: str = ""
    trial: int = 1                       # RegDB split 1..10 (ignored for SYSU)
    cache_dir: str | None = None         # default: <data>/.admpff-cache, or ~/.cache/admpff if read-only
    heldout_ids: int = 0                 # hold out N training ids as a validation set (best.pt)
    # model (-> ModelConfig)
    backbone: str = "resnet50"
    size: str = "288x144"
    pretrained: str = "imagenet"         # imagenet | /path/to/weights.pth | none
    scheme: int = 3
    slicing: str = "pose"
    pool: str = "max"
    gem_p: float = 3.0
    dim: int = 512
    en_rows: int = 3
    # loss (eq. 10)
    alpha: float = 1.0
    beta: float = 1.0
    margin: float = 0.3
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0          # scales every hetero-center triplet term (1 = paper)
    triplet_norm_feat: bool = False      # L2-normalise features inside the triplet terms (from-scratch runs)
    # sampler and augmentation
    batch_p: int = 6
    batch_k: int = 8
    pad: int = 10
    channel_aug: bool = False
    # optimiser and schedule (eq. 11)
    epochs: int = PAPER_EPOCHS
    lr: float = 0.1
    backbone_lr_mult: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    warmup_epochs: int = 10
    milestones: list = field(default_factory=lambda: [20, 50])
    gamma: float = 0.1
    scale_schedule: bool = False         # rescale warm-up and milestones from 80 epochs to --epochs
    # run
    out: str = ""
    resume: str | None = None
    seed: int = 0
    workers: int = 4
    device: str = "auto"
    amp: bool = False
    sync_bn: bool = False
    max_steps_per_epoch: int | None = None
    eval_every: int = 0                  # epochs; 0 = only after the last epoch if --heldout-ids, else never
    eval_mode: str = "all"               # SYSU search mode of in-training evaluation
    eval_trials: int = 1                 # SYSU gallery trials of in-training evaluation
    save_every: int = 0                  # also keep epoch_XXX.pt every N epochs (0 = only last.pt)
    log_every: int = 20                  # steps between TensorBoard points
    tensorboard: bool = True
    progress: bool = True

    # -- derived ---------------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return parse_size(self.size)[0]

    @property
    def width(self) -> int:
        return parse_size(self.size)[1]

    def schedule(self) -> tuple[int, list[int]]:
        """(warm-up epochs, milestones) actually used: rescaled to ``epochs`` with ``scale_schedule``."""
        if self.scale_schedule:
            return scaled_schedule(self.epochs, self.warmup_epochs, self.milestones)
        return int(self.warmup_epochs), [int(m) for m in self.milestones]

    @property
    def pretrained_source(self) -> str | None:
        return None if str(self.pretrained).lower() in ("none", "", "null", "false") else self.pretrained

    def model_config(self, num_classes: int, *, with_pretrained: bool = True):
        """The :class:`ModelConfig` for this run.

        The copy saved in checkpoints has ``pretrained=None`` (``with_pretrained=False``): the weights
        are in the checkpoint, and rebuilding must not look for ImageNet files on, say, an export host.
        """
        from admpff.training.model import ModelConfig
        return ModelConfig(num_classes=int(num_classes), scheme=self.scheme, slicing=self.slicing, pool=self.pool,
                           gem_p=self.gem_p, dim=self.dim, en_rows=self.en_rows, height=self.height,
                           width=self.width, backbone=self.backbone,
                           pretrained=self.pretrained_source if with_pretrained else None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = [int(m) for m in self.milestones]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(self) -> "TrainConfig":
        if self.dataset not in DATASETS:
            raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)} (got {self.dataset!r})")
        if not self.data:
            raise ConfigError("--data ROOT is required (the data set's root folder)")
        parse_size(self.size)
        if self.dataset == "regdb" and not 1 <= int(self.trial) <= 10:
            raise ConfigError(f"--trial must be in 1..10 for RegDB (got {self.trial})")
        for name in ("epochs", "batch_p", "batch_k"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive (got {self.lr})")
        if self.warmup_epochs < 0 or any(int(m) < 0 for m in self.milestones):
            raise ConfigError("--lr-warmup and --lr-milestones must be >= 0")
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"--lr-milestones must be increasing (got {self.milestones})")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError("--max-steps-per-epoch must be >= 1")
        if self.heldout_ids < 0:
            raise ConfigError("--heldout-ids must be >= 0")
        if self.triplet_weight < 0:
            raise ConfigError(f"--triplet-weight must be >= 0 (got {self.triplet_weight})")
        if self.eval_mode not in ("all", "indoor"):
            raise ConfigError(f"--eval-mode must be all or indoor (got {self.eval_mode!r})")
        if self.batch_p < 2:
            raise ConfigError("--batch-p must be >= 2: the hetero-center triplet loss needs two identities")
        return self


def parse_size(text: str) -> tuple[int, int]:
    """``"288x144"`` -> (288, 144) (height x width)."""
    try:
        h, w = str(text).lower().replace("*", "x").split("x")
        h, w = int(h), int(w)
    except ValueError:
        raise ConfigError(f"--size must be HEIGHTxWIDTH, e.g. 288x144 (got {text!r})") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"--size must be positive (got {text!r})")
    return h, w


def _parse_milestones(text: str) -> list[int]:
    try:
        return [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, e.g. 20,50 (got {text!r})") from None


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


SELECTION_HELP = (
    "Model selection: the checkpoint to report is the LAST epoch (last.pt). SYSU-MM01 has no validation "
    "split, and picking the best epoch on the test set, as HcTri's code does, inflates the reported "
    "results. --heldout-ids N holds N training identities out as a validation set (queried with the test "
    "protocol), and the best epoch on it (mAP) is saved as best.pt.")

EPILOG = SELECTION_HELP + (
    " Multi-GPU: torchrun --nproc_per_node=G -m admpff.training.cli_train ... (DDP; add --sync-bn for "
    "SyncBatchNorm); multi-node: torchrun --nnodes=N --node_rank=R --rdzv_backend=c10d "
    "--rdzv_endpoint=HOST:PORT --nproc_per_node=G -m admpff.training.cli_train ...")


def build_parser() -> argparse.ArgumentParser:
    """``admpff-train`` flags.  Defaults are applied later (see :func:`resolve_config`), so that a flag
    given on the command line, and only such a flag, overrides the YAML file and the dataset preset."""
    from admpff.runtime.cli_support import make_parser

    S = argparse.SUPPRESS
    p = make_parser("admpff-train", "Train ADMPFF-Net on SYSU-MM01 or RegDB (HcTri recipe, paper eq. 11).",
                    epilog=textwrap.fill(EPILOG, 100), argument_default=S)
    g = p.add_argument_group("data")
    g.add_argument("--config", metavar="YAML", help="YAML file of settings (flags given here override it)")
    g.add_argument("--dataset", choices=DATASETS, help="data set and its preset (alpha, beta, P, K)")
    g.add_argument("--data", metavar="ROOT", help="data set root in its official layout")
    g.add_argument("--trial", type=int, help="RegDB split 1..10 (default 1)")
    g.add_argument("--cache-dir", dest="cache_dir", metavar="DIR",
                   help="where the memory-mapped image caches go (default ROOT/.admpff-cache)")
    g.add_argument("--heldout-ids", dest="heldout_ids", type=int, metavar="N",
                   help="hold out N training identities as a validation set; best epoch on it -> best.pt")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=("resnet50", "resnet34", "resnet18"), help="default resnet50 (paper)")
    g.add_argument("--size", metavar="HxW", help="input size, default 288x144")
    g.add_argument("--pretrained", metavar="imagenet|PATH|none",
                   help="backbone initialisation (default imagenet, from the local torch hub cache)")
    g.add_argument("--scheme", type=int, choices=(1, 2, 3, 4), help="parameter-sharing scheme (default 3)")
    g.add_argument("--slicing", choices=("pose", "equal"), help="P3 branch slicing (default pose, 1:2:3)")
    g.add_argument("--pool", choices=("max", "gem"), help="stripe pooling (default max)")
    g.add_argument("--gem-p", dest="gem_p", type=float, help="GeM exponent when --pool gem")
    g.add_argument("--dim", type=int, help="per-stripe embedding size (default 512)")
    g.add_argument("--en-rows", dest="en_rows", type=int, help="feature rows of the LIE stripe (default 3)")
    g = p.add_argument_group("loss")
    g.add_argument("--alpha", type=float, help="weight of the P3 branch loss (preset: sysu 1, regdb 3)")
    g.add_argument("--beta", type=float, help="weight of the P6 branch loss (preset: sysu 1, regdb 6)")
    g.add_argument("--margin", type=float, help="hetero-center triplet margin (default 0.3)")
    g.add_argument("--label-smoothing", dest="label_smoothing", type=float, help="default 0.1")
    g.add_argument("--triplet-weight", dest="triplet_weight", type=float,
                   help="scale of every hetero-center triplet term (default 1 = paper; 0 = identity losses only)")
    g.add_argument("--triplet-norm-feat", dest="triplet_norm_feat", type=_bool, nargs="?", const=True,
                   metavar="true|false",
                   help="L2-normalise features inside the triplet terms (default false = paper; true for a start "
                        "from random weights, where raw features collapse to zero)")
    g = p.add_argument_group("batches and augmentation")
    g.add_argument("--batch-p", dest="batch_p", type=int, help="identities per batch (preset: sysu 6, regdb 8)")
    g.add_argument("--batch-k", dest="batch_k", type=int,
                   help="images per identity and modality (preset: sysu 8, regdb 4)")
    g.add_argument("--pad", type=int, help="zero padding before the random crop (default 10)")
    g.add_argument("--channel-aug", dest="channel_aug", action="store_const", const=True,
                   help="CAJ channel augmentation (ChannelAdapGray)")
    g = p.add_argument_group("optimiser and schedule")
    g.add_argument("--epochs", type=int, help="default 80 (paper)")
    g.add_argument("--lr", type=float, help="head learning rate (default 0.1)")
    g.add_argument("--backbone-lr-mult", dest="backbone_lr_mult", type=float,
                   help="backbone lr = lr x this (default 0.1, HcTri)")
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", dest="weight_decay", type=float)
    g.add_argument("--nesterov", type=_bool, metavar="true|false")
    g.add_argument("--lr-warmup", dest="warmup_epochs", type=int, metavar="E",
                   help="linear warm-up epochs, lr (e+1)/E (default 10)")
    g.add_argument("--lr-milestones", dest="milestones", type=_parse_milestones, metavar="E1,E2",
                   help="epochs where lr is multiplied by --lr-gamma (default 20,50)")
    g.add_argument("--lr-gamma", dest="gamma", type=float, help="default 0.1")
    g.add_argument("--scale-schedule", dest="scale_schedule", action="store_const", const=True,
                   help="rescale warm-up and milestones from the paper's 80 epochs to --epochs (short runs)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="output folder (default runs/<dataset>)")
    g.add_argument("--resume", metavar="PATH",
                   help="continue a run from its checkpoint (e.g. OUT/last.pt); it goes on in the checkpoint's "
                        "folder, or in --out when given, never in another run's folder")
    g.add_argument("--seed", type=int)
    g.add_argument("--workers", type=int, help="data loader processes (default 4)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (under torchrun: the local rank's GPU)")
    g.add_argument("--amp", action="store_const", const=True, help="mixed precision (CUDA only)")
    g.add_argument("--sync-bn", dest="sync_bn", action="store_const", const=True,
                   help="SyncBatchNorm across processes (DDP only)")
    g.add_argument("--max-steps-per-epoch", dest="max_steps_per_epoch", type=int, metavar="N",
                   help="cap the steps of each epoch (short runs)")
    g.add_argument("--eval-every", dest="eval_every", type=int, metavar="E",
                   help="evaluate every E epochs (on the held-out ids if --heldout-ids, else the test protocol)")
    g.add_argument("--eval-mode", dest="eval_mode", choices=("all", "indoor"))
    g.add_argument("--eval-trials", dest="eval_trials", type=int, help="SYSU gallery trials per evaluation")
    g.add_argument("--save-every", dest="save_every", type=int, metavar="E", help="also keep epoch_XXX.pt")
    g.add_argument("--log-every", dest="log_every", type=int, metavar="STEPS")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_const", const=False)
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    _show_defaults(p)
    return p


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Write TrainConfig's default into each flag's help (the parser's own defaults are SUPPRESS, so
    that only flags given on the command line override the YAML file and the dataset preset)."""
    defaults = TrainConfig().to_dict()
    for action in parser._actions:
        if action.dest not in defaults or isinstance(action, argparse._StoreConstAction):
            continue
        text = action.help or ""
        value = defaults[action.dest]
        if "default" in text or "preset" in text or value in (None, ""):
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        action.help = f"{text} (default: {value})".strip()


def _normalise_keys(d: dict, source: str) -> dict:
    aliases = {"lr_warmup": "warmup_epochs", "lr_milestones": "milestones", "lr_gamma": "gamma",
               "batch_size": "batch_p", "num_pos": "batch_k"}
    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in d.items():
        k = aliases.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if k not in known:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        if k == "milestones" and isinstance(value, str):
            value = _parse_milestones(value)
        out[k] = value
    return out


def load_yaml(path: str) -> dict:
    import yaml
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return _normalise_keys(data, path)


def scaled_schedule(epochs: int, warmup: int, milestones: Sequence[int],
                    reference: int = PAPER_EPOCHS) -> tuple[int, list[int]]:
    """Warm-up and milestones of an ``reference``-epoch schedule stretched to ``epochs``."""
    f = epochs / float(reference)
    return int(round(warmup * f)), [int(round(m * f)) for m in milestones]


def resolve_config(argv: Sequence[str] | None = None, *, base: dict | None = None) -> tuple[TrainConfig, dict]:
    """Parse ``argv`` into a validated :class:`TrainConfig`.

    Returns ``(config, explicit)`` where ``explicit`` holds the settings given on the command line
    (resuming uses them to override the checkpoint's configuration).  ``base`` (a stored config)
    replaces defaults, preset and YAML: that is how ``--resume`` continues a run unchanged.
    """
    args = vars(build_parser().parse_args(argv))
    yaml_path = args.pop("config", None)
    explicit = _normalise_keys(args, "command line")
    from_file = load_yaml(yaml_path) if yaml_path else {}
    if base is not None:
        merged = TrainConfig().to_dict()
        merged.update(base)
        merged.update(from_file)
        merged.update(explicit)
        return resolve_paths(TrainConfig.from_dict(merged)).validate(), explicit
    dataset = explicit.get("dataset", from_file.get("dataset", ""))
    merged = TrainConfig().to_dict()
    merged.update(DATASET_PRESETS.get(dataset, {}))
    merged.update(from_file)
    merged.update(explicit)
    if not merged.get("out"):
        merged["out"] = os.path.join("runs", dataset or "run")
    return resolve_paths(TrainConfig.from_dict(merged)).validate(), explicit


def resolve_paths(config: TrainConfig) -> TrainConfig:
    """Make ``data``, ``out``, ``cache_dir`` and ``resume`` absolute, so that a checkpoint (which stores
    the configuration) means the same folders whatever directory it is later resumed or evaluated from."""
    for name in ("data", "out", "cache_dir", "resume"):
        value = getattr(config, name)
        if value:
            setattr(config, name, os.path.abspath(os.path.expanduser(str(value))))
    return config
