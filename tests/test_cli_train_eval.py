"""admpff-train / admpff-eval end to end on tiny generated data, and their one-line errors (exit 2)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from admpff.training import cli_eval, cli_train
from admpff.training.checkpoint import load_checkpoint
from admpff.training.datasets.synthetic import write_regdb, write_sysu
from admpff.training.model import build_model

torch.set_num_threads(2)

TINY = ["--backbone", "resnet18", "--size", "96x48", "--dim", "16", "--en-rows", "1", "--pretrained", "none",
        "--workers", "0", "--no-progress", "--batch-p", "3", "--batch-k", "2", "--max-steps-per-epoch", "2",
        "--lr", "0.01"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    write_sysu(base / "sysu", num_ids=15, images_per_cam=2, seed=3)
    write_regdb(base / "regdb", num_ids=8, images_per_modality=3, seed=3, trials=2)
    return base


def one_error_line(capsys, code, expected_code=2):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code
    assert len(err) == 1, err
    return err[0]


def test_sysu_train_then_eval(data, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_train.main(["--dataset", "sysu", "--data", str(data / "sysu"), "--out", str(out), "--epochs", "1",
                           "--eval-every", "1", "--save-every", "1", *TINY])
    assert code == 0
    for name in ("last.pt", "epoch_001.pt", "train_log.jsonl"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1]
    assert {"loss", "lr", "images_per_s", "eval"} <= set(epochs[0])
    assert {"id/en", "tri/en", "mGFD3", "mGFD6"} <= set(epochs[0]["terms"])
    assert epochs[0]["eval"]["split"] == "test" and 0 <= epochs[0]["eval"]["mAP"] <= 100

    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["train"]["dataset"] == "sysu"
    build_model(ckpt["config"]["model"]).load_state_dict(ckpt["model"])

    # a second run into the same folder must not silently overwrite it
    code = cli_train.main(["--dataset", "sysu", "--data", str(data / "sysu"), "--out", str(out), *TINY])
    assert "--resume" in one_error_line(capsys, code)
    # resuming a finished run with more epochs continues from its checkpoint
    assert cli_train.main(["--resume", str(out / "last.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 2

    eval_out = tmp_path / "eval"
    code = cli_eval.main([str(out / "last.pt"), "--dataset", "sysu", "--data", str(data / "sysu"),
                          "--trials", "2", "--out", str(eval_out), "--no-progress", "--batch", "16"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "R1" in printed and "mINP" in printed
    results = json.loads((eval_out / "results.json").read_text())
    assert results["summary"]["trials"] == 2 and len(results["runs"][0]["trials"]) == 2
    assert {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"} <= set(results["summary"])
    assert (eval_out / "cmc.png").read_bytes()[:4] == b"\x89PNG"


def test_regdb_train_then_eval_both_directions(data, tmp_path, capsys):
    out = tmp_path / "regdb"
    assert cli_train.main(["--dataset", "regdb", "--data", str(data / "regdb"), "--trial", "2", "--out", str(out),
                           "--epochs", "1", "--no-tensorboard", *TINY]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["config"]["train"]["alpha"], ckpt["config"]["train"]["beta"]) == (3.0, 6.0)   # RegDB preset
    for extra, mode in (([], "visible_to_thermal"), (["--tvsearch"], "thermal_to_visible")):
        eval_out = tmp_path / f"eval-{mode}"
        # --dataset and --data default to the training run's
        assert cli_eval.main([str(out / "last.pt"), "--out", str(eval_out), "--no-progress", *extra]) == 0
        results = json.loads((eval_out / "results.json").read_text())
        assert results["mode"] == mode and results["runs"][0]["trials"][0]["trial"] == 2
    capsys.readouterr()


def test_bad_inputs_are_one_line_errors_with_exit_2(data, tmp_path, capsys):
    code = cli_train.main(["--dataset", "sysu", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                           *TINY])
    assert "not found" in one_error_line(capsys, code)
    empty = tmp_path / "empty-ids"
    write_sysu(empty, num_ids=6, images_per_cam=1, seed=0)
    ids = (empty / "exp" / "train_id.txt").read_text()
    (empty / "exp" / "train_id.txt").write_text("\n")
    code = cli_train.main(["--dataset", "sysu", "--data", str(empty), "--out", str(tmp_path / "o2"), *TINY])
    assert "empty" in one_error_line(capsys, code)
    (empty / "exp" / "train_id.txt").write_text(ids)
    os.remove(empty / "exp" / "val_id.txt")
    code = cli_train.main(["--dataset", "sysu", "--data", str(empty), "--out", str(tmp_path / "o3"), *TINY])
    assert "val_id.txt" in one_error_line(capsys, code)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    code = cli_train.main(["--resume", str(corrupt)])
    assert "corrupt" in one_error_line(capsys, code)
    code = cli_eval.main([str(corrupt), "--dataset", "sysu", "--data", str(data / "sysu")])
    assert "corrupt" in one_error_line(capsys, code)
    code = cli_eval.main([str(tmp_path / "missing.pt"), "--dataset", "sysu", "--data", str(data / "sysu")])
    assert "not found" in one_error_line(capsys, code)
    code = cli_train.main(["--dataset", "sysu", "--data", str(data / "sysu"), "--size", "100x50", "--out",
                           str(tmp_path / "o4"), *[a for a in TINY if a not in ("--size", "96x48")]])
    assert "size" in one_error_line(capsys, code)


def test_console_script_reports_missing_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "admpff.training.cli_eval", str(tmp_path / "none.pt"),
                           "--dataset", "sysu", "--data", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "checkpoint not found" in proc.stderr
    help_text = subprocess.run([sys.executable, "-m", "admpff.training.cli_train", "--help"],
                               capture_output=True, text=True).stdout
    help_text = " ".join(help_text.split())  # wrapped to the terminal's width
    assert "no validation split" in help_text and "--heldout-ids" in help_text and "torchrun" in help_text
