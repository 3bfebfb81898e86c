"""``admpff-train``: train ADMPFF-Net on SYSU-MM01 or RegDB.

    admpff-train --dataset sysu --data /data/SYSU-MM01 --out runs/sysu
    admpff-train --dataset regdb --data /data/RegDB --trial 3 --out runs/regdb-t3
    admpff-train --config configs/sysu.yaml --epochs 40          # flags override the file
    admpff-train --resume runs/sysu/last.pt                       # continue a killed run exactly, in runs/sysu
    torchrun --standalone --nproc_per_node=4 -m admpff.training.cli_train --config configs/sysu.yaml --sync-bn

Outputs in ``--out``: ``last.pt`` every epoch (atomic), ``best.pt`` with ``--heldout-ids``,
``epoch_XXX.pt`` with ``--save-every``, ``train_log.jsonl`` (per-epoch loss terms, lr, throughput,
evaluations) and ``tb/`` (TensorBoard).  The model to report is the LAST epoch: SYSU-MM01 has no
validation split, and choosing the best epoch on the test set (as HcTri does) inflates results.
Multi-GPU / multi-node usage: see :mod:`admpff.training.engine`.

``--resume CKPT`` continues in the checkpoint's own folder (or in ``--out`` when given), never in the
``out`` stored inside the checkpoint: a copied checkpoint must not write into the run it was copied
from.  It refuses a folder whose ``last.pt`` is another file than ``CKPT`` (another run, or a later
epoch of this one) unless ``--overwrite``.  Checkpoints store absolute data and output paths, so a run
resumes from any working directory.

Errors (missing data, bad split files, unreadable checkpoint, bad flags, an ``--out`` that is a file)
are one line on stderr and exit status 2, before any work starts.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

PROG = "admpff-train"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def resume_config(config, given: dict, *, overwrite: bool = False):
    """Where and on what a resumed run goes on; raises ``ConfigError`` before any work.

    ``config`` is the checkpoint's configuration with the command line's flags applied (``given``).
    The run continues in ``--out`` when given, else in the checkpoint's own folder, never in the
    ``out`` stored in the checkpoint (the checkpoint may be a copy of another run's).  A folder whose
    ``last.pt`` is not the checkpoint being resumed is refused unless ``overwrite``.
    """
    from .config import ConfigError

    resume = config.resume
    if "out" not in given:
        config.out = os.path.dirname(resume)
    last = os.path.join(config.out, "last.pt")
    if os.path.isfile(last) and not os.path.samefile(last, resume) and not overwrite:
        raise ConfigError(f"{config.out} already holds last.pt, which is not the checkpoint being resumed "
                          f"({resume}); resuming there would replace it: give another --out, or --overwrite")
    if "data" not in given and not os.path.isdir(config.data):
        raise ConfigError(f"the checkpoint's data folder {config.data} is not found from here; pass --data ROOT")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .config import ConfigError, build_parser, resolve_config
    from .qat_cli import add_qat_arguments, make_trainer, qat_source_config, split_qat_arguments

    parser = build_parser()
    parser.add_argument("--overwrite", action="store_true",
                        help="start (or resume) a run in --out even if it already holds another run's last.pt")
    add_qat_arguments(parser)
    try:
        # argparse prints usage and exits 2 on bad flags, --help exits 0
        explicit = vars(parser.parse_args(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    overwrite = bool(explicit.pop("overwrite", False))
    argv = [a for a in argv if a != "--overwrite"]
    qat, argv = split_qat_arguments(argv)  # --qat-from ...: quantization-aware fine-tuning (training/qat.py)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)

    import torch  # noqa: F401  (after argument parsing: --help stays fast)

    from admpff.runtime.cli_support import CommandError, prepare_output_dir

    from .checkpoint import CheckpointError, load_checkpoint
    from .datasets.common import DatasetError
    from .engine import Trainer, TrainingError
    from .model import ModelConfigError, PretrainedWeightsError
    from .sampler import SamplerError

    trainer = None
    try:
        ckpt = source = None
        if explicit.get("resume"):
            ckpt = load_checkpoint(explicit["resume"])
            config, given = resolve_config(argv, base=ckpt["config"].get("train", {}))
            config = resume_config(config, given, overwrite=overwrite)
        elif qat.qat_from:
            source, config = qat_source_config(qat.qat_from, argv, overwrite)
        else:
            config, _ = resolve_config(argv)
            if os.path.isfile(os.path.join(config.out, "last.pt")) and not overwrite:
                raise ConfigError(f"{config.out} already holds a run (last.pt): continue it with --resume "
                                  f"{os.path.join(config.out, 'last.pt')}, or pass --overwrite / another --out")
        prepare_output_dir(config.out)
        trainer = make_trainer(config, resume=ckpt, source=source, qat=qat)
        if ckpt is not None and trainer.start_epoch >= config.epochs:
            logging.info("the checkpoint already has %d of %d epochs; nothing to do (raise --epochs to go on)",
                         trainer.start_epoch, config.epochs)
        summary = trainer.fit()
        if trainer.is_main:
            logging.info("done: %d epochs, checkpoint %s", summary["epochs_done"],
                         os.path.join(config.out, "last.pt"))
            if summary["best"].get("epoch"):
                logging.info("best validation %s %.2f at epoch %d -> %s", summary["best"]["metric"],
                             summary["best"]["value"], summary["best"]["epoch"], os.path.join(config.out, "best.pt"))
        return 0
    except (ConfigError, CheckpointError, DatasetError, SamplerError, ModelConfigError, PretrainedWeightsError,
            TrainingError, CommandError) as exc:
        return _fail(_one_line(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume <out>/last.pt", file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.close()


if __name__ == "__main__":
    sys.exit(main())
