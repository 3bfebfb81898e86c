"""``admpff-eval``: evaluate a trained checkpoint with the SYSU-MM01 or RegDB protocol.

    admpff-eval runs/sysu/last.pt --dataset sysu --data /data/SYSU-MM01 [--mode indoor] [--trials 10]
    admpff-eval runs/regdb-t1/last.pt --dataset regdb --data /data/RegDB [--tvsearch]
    admpff-eval runs/regdb-t{1..10}/last.pt --dataset regdb --data /data/RegDB   # 10-trial mean

SYSU-MM01: the query (all IR images of the 96 test ids) is embedded once, the single-shot RGB gallery
is drawn per trial (AGW's ``random.seed(trial)``), metrics are averaged over ``--trials``.  RegDB: one
model per trial (each checkpoint on the trial it was trained on, or ``--trial``), visible->thermal,
or thermal->visible with ``--tvsearch``; several checkpoints are averaged.  Images are read through
the image cache, i.e. ``admpff.runtime.preprocess.resize_crop``, the runtime's exact preprocessing.

Prints a table (R1, R5, R10, R20, mAP, mINP; percent) and writes ``results.json`` and ``cmc.png`` to
``--out`` (default: ``<checkpoint dir>/eval-<dataset>-<mode>``), a folder made before the evaluation
starts.  Errors (missing or corrupt checkpoint, missing data, an ``--out`` that is a file) are one
line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

PROG = "admpff-eval"


def build_parser() -> argparse.ArgumentParser:
    from admpff.runtime.cli_support import make_parser

    p = make_parser(PROG, "Evaluate ADMPFF-Net checkpoints (AGW/HcTri protocol).")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoint(s) from admpff-train; several only for RegDB (one per trial)")
    p.add_argument("--dataset", choices=("sysu", "regdb"), help="default: the data set it was trained on")
    p.add_argument("--data", metavar="ROOT", help="data set root (default: the training run's --data)")
    p.add_argument("--mode", choices=("all", "indoor"), default="all", help="SYSU search mode")
    p.add_argument("--trials", type=int, default=10, help="SYSU gallery trials averaged")
    p.add_argument("--trial", type=int, help="RegDB split to test (default: the one the checkpoint was trained on)")
    p.add_argument("--tvsearch", action="store_true", help="RegDB thermal->visible (default visible->thermal)")
    p.add_argument("--out", metavar="DIR",
                   help="where results.json and cmc.png go (default: CHECKPOINT_DIR/eval-DATASET-MODE)")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--cache-dir", metavar="DIR", help="image caches (default: ROOT/.admpff-cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> dict:
    """Evaluate; returns the results dict (also written to ``<out>/results.json``)."""
    import torch

    from admpff.runtime.atomic import write_json
    from admpff.runtime.cli_support import prepare_output_dir

    from .checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
    from .datasets.common import DatasetError
    from .evaluation import format_table, plot_cmc, summarize
    from .features import default_cache_dir, evaluate_regdb, evaluate_sysu

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DatasetError("--device cuda was asked for, but CUDA is not available")
    progress = not args.no_progress
    if args.out:  # a bad --out is reported before any checkpoint is read
        prepare_output_dir(args.out)
    ckpts = [(path, load_checkpoint(path, require_training_state=False)) for path in args.checkpoints]
    train_cfgs = [c["config"].get("train", {}) for _, c in ckpts]
    dataset = args.dataset or train_cfgs[0].get("dataset")
    if dataset not in ("sysu", "regdb"):
        raise DatasetError("--dataset sysu|regdb is required (the checkpoint does not name its data set)")
    data = args.data or train_cfgs[0].get("data")
    if not data:
        raise DatasetError("--data ROOT is required")
    if not os.path.isdir(data):
        raise DatasetError(f"data root not found: {data!r} is not a directory"
                           + ("" if args.data else " (the training run's --data); pass --data ROOT"))
    if dataset == "sysu" and len(ckpts) > 1:
        raise DatasetError("give one checkpoint for SYSU-MM01 (several are for RegDB's per-trial models)")
    if args.trials < 1:
        raise DatasetError("--trials must be >= 1")
    cache_dir = args.cache_dir or default_cache_dir(data)
    if dataset == "sysu":
        mode = args.mode
    else:
        mode = "thermal_to_visible" if args.tvsearch else "visible_to_thermal"
    # the output folder exists before the evaluation starts, so its results cannot be lost at the end
    out = str(prepare_output_dir(args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoints[0])),
                                                          f"eval-{dataset}-{mode}")))

    runs = []
    for path, ckpt in ckpts:
        trained = ckpt["config"].get("train", {})
        if trained.get("dataset") and trained["dataset"] != dataset:
            logging.warning("%s was trained on %s, evaluating on %s", path, trained["dataset"], dataset)
        model = build_model_from_checkpoint(ckpt, device)
        contract = model.contract()
        common = dict(cache_dir=cache_dir, contract=contract, batch_size=args.batch, device=device,
                      progress=progress)
        if dataset == "sysu":
            from .datasets.sysu import SYSUMM01
            result = evaluate_sysu(model, SYSUMM01(data), mode=args.mode, trials=args.trials, **common)
        else:
            from .datasets.regdb import RegDB
            trial = args.trial if args.trial is not None else int(trained.get("trial") or 1)
            if trained.get("dataset") == "regdb" and trained.get("trial") and int(trained["trial"]) != trial:
                logging.warning("%s was trained on RegDB trial %s but is tested on trial %d: the test ids "
                                "overlap its training ids, so the numbers are not valid", path,
                                trained["trial"], trial)
            result = evaluate_regdb(model, RegDB(data, trial), tvsearch=args.tvsearch, **common)
        runs.append({"checkpoint": os.path.abspath(path), "epoch": ckpt.get("epoch"), **result})
        del model

    if dataset == "sysu":
        summary = runs[0]["summary"]
    else:
        results = []
        for r in runs:  # summarize expects fractions; rebuild from each run's single-trial curve
            cmc = [v / 100.0 for v in r["summary"]["cmc"]]
            results.append((cmc, r["summary"]["mAP"] / 100.0, r["summary"]["mINP"] / 100.0))
        summary = summarize(results)
    name = f"{dataset} {mode}" + (f" ({len(runs[0]['trials'])} trials)" if dataset == "sysu" else
                                  f" ({len(runs)} trial{'s' if len(runs) > 1 else ''})")
    table = format_table({name: summary})
    report = {"dataset": dataset, "data": os.path.abspath(data), "mode": mode, "summary": summary,
              "runs": runs, "table": table}
    plot_cmc({name: summary["cmc"]}, os.path.join(out, "cmc.png"))
    write_json(os.path.join(out, "results.json"), report)
    report["out"] = out
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .checkpoint import CheckpointError
    from .datasets.common import DatasetError
    from .model import ModelConfigError
    from admpff.runtime.cli_support import CommandError
    try:
        report = run(args)
    except (CheckpointError, DatasetError, ModelConfigError, CommandError) as exc:
        return _fail(_one_line(exc))
    except KeyboardInterrupt:
        return 130
    print(report["table"])
    print(f"results: {os.path.join(report['out'], 'results.json')}, CMC curve: {os.path.join(report['out'], 'cmc.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
