"""``admpff-train``: train ADMPFF-Net on SYSU-MM01 or RegDB.

    admpff-train --dataset sysu --data /data/SYSU-MM01 --out runs/sysu
    admpff-train --dataset regdb --data /data/RegDB --trial 3 --out runs/regdb-t3
    admpff-train --config configs/sysu.yaml --epochs 40          # flags override the file
    admpff-train --resume runs/sysu/last.pt                       # continue a killed run exactly
    torchrun --standalone --nproc_per_node=4 -m admpff.training.cli_train --config configs/sysu.yaml --sync-bn

Outputs in ``--out``: ``last.pt`` every epoch (atomic), ``best.pt`` with ``--heldout-ids``,
``epoch_XXX.pt`` with ``--save-every``, ``train_log.jsonl`` (per-epoch loss terms, lr, throughput,
evaluations) and ``tb/`` (TensorBoard).  The model to report is the LAST epoch: SYSU-MM01 has no
validation split, and choosing the best epoch on the test set (as HcTri does) inflates results.
Multi-GPU / multi-node usage: see :mod:`admpff.training.engine`.

Errors (missing data, bad split files, unreadable checkpoint, bad flags) are one line on stderr and
exit status 2.
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .config import ConfigError, build_parser, resolve_config

    parser = build_parser()
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run even if --out already holds a last.pt")
    try:
        # argparse prints usage and exits 2 on bad flags, --help exits 0
        explicit = vars(parser.parse_args(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    overwrite = bool(explicit.pop("overwrite", False))
    argv = [a for a in argv if a != "--overwrite"]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)

    import torch  # noqa: F401  (after argument parsing: --help stays fast)

    from .checkpoint import CheckpointError, load_checkpoint
    from .datasets.common import DatasetError
    from .engine import Trainer, TrainingError
    from .model import ModelConfigError, PretrainedWeightsError
    from .sampler import SamplerError

    trainer = None
    try:
        ckpt = None
        if explicit.get("resume"):
            ckpt = load_checkpoint(explicit["resume"])
            config, _ = resolve_config(argv, base=ckpt["config"].get("train", {}))
        else:
            config, _ = resolve_config(argv)
            if os.path.exists(os.path.join(config.out, "last.pt")) and not overwrite:
                raise ConfigError(f"{config.out} already holds a run (last.pt): continue it with --resume "
                                  f"{os.path.join(config.out, 'last.pt')}, or pass --overwrite / another --out")
        trainer = Trainer(config, resume=ckpt)
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
            TrainingError) as exc:
        return _fail(_one_line(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume <out>/last.pt", file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.close()


if __name__ == "__main__":
    sys.exit(main())
