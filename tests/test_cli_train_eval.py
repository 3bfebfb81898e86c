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


def test_resume_never_writes_into_another_run_and_works_from_anywhere(data, tmp_path, monkeypatch, capsys):
    """Issue 10: --resume of a copied checkpoint wrote to the run it was copied from; from another
    folder it failed on the relative data path, and with --data it made a new ./runs/..."""
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "regdb").symlink_to(data / "regdb")
    monkeypatch.chdir(tmp_path / "a")
    assert cli_train.main(["--dataset", "regdb", "--data", "../regdb", "--out", "runs/first", "--epochs", "1",
                           "--no-tensorboard", *TINY]) == 0
    first = tmp_path / "a" / "runs" / "first" / "last.pt"
    stored = load_checkpoint(first)["config"]["train"]
    assert stored["data"] == str(tmp_path / "regdb") and stored["out"] == str(first.parent)  # absolute
    copy = tmp_path / "a" / "runs" / "copy"
    copy.mkdir()
    (copy / "last.pt").write_bytes(first.read_bytes())
    before = first.read_bytes()

    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli_train.main(["--resume", "../a/runs/copy/last.pt", "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(copy / "last.pt")["epoch"] == 2 and first.read_bytes() == before
    assert cli_train.main(["--resume", str(copy / "last.pt"), "--data", str(data / "regdb"), "--epochs", "3",
                           "--no-progress"]) == 0
    assert load_checkpoint(copy / "last.pt")["epoch"] == 3 and list((tmp_path / "elsewhere").iterdir()) == []
    # resuming into a folder whose last.pt is another file: refused, before any work
    code = cli_train.main(["--resume", str(copy / "last.pt"), "--out", str(first.parent), "--epochs", "4"])
    assert "not the checkpoint being resumed" in one_error_line(capsys, code) and first.read_bytes() == before


def test_out_that_is_a_file_is_one_line_exit_2_before_any_work(data, tmp_path, capsys, monkeypatch):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    code = cli_train.main(["--dataset", "regdb", "--data", str(data / "regdb"), "--out", str(taken), *TINY])
    assert "--out" in one_error_line(capsys, code) and taken.read_text() == "not a folder"
    from admpff.training.datasets import synthetic
    assert "existing file" in one_error_line(capsys, synthetic.main(["regdb", str(taken)]))

    # admpff-eval: a bad --out fails before anything is read; a good one exists before the evaluation runs
    run = tmp_path / "run"
    assert cli_train.main(["--dataset", "regdb", "--data", str(data / "regdb"), "--out", str(run), "--epochs", "1",
                           "--no-tensorboard", *TINY]) == 0
    code = cli_eval.main([str(run / "last.pt"), "--out", str(taken), "--no-progress"])
    assert "--out" in one_error_line(capsys, code)
    from admpff.training import features
    seen = {}
    real = features.evaluate_regdb

    def spy(*args, **kwargs):
        seen["out existed"] = (run / "eval-regdb-visible_to_thermal").is_dir()
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "evaluate_regdb", spy)
    assert cli_eval.main([str(run / "last.pt"), "--no-progress"]) == 0
    assert seen == {"out existed": True}
    assert (run / "eval-regdb-visible_to_thermal" / "results.json").is_file()
    capsys.readouterr()


@pytest.mark.parametrize("module", ["admpff.training.cli_train", "admpff.training.cli_eval",
                                    "admpff.training.datasets.synthetic", "admpff.runtime.reid"])
def test_help_states_every_default(module):
    text = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"}).stdout
    options, current = {}, None
    for line in text.splitlines():  # an option's help may continue on the next lines
        stripped = line.strip()
        if stripped.startswith("-"):
            current = stripped.split()[0].rstrip(",")
            options[current] = stripped
        elif current and stripped and line.startswith(" "):
            options[current] += " " + stripped
        else:
            current = None
    expected = {"admpff.training.cli_train": ["--lr", "--epochs", "--momentum", "--weight-decay", "--seed",
                                              "--workers", "--device", "--log-every", "--nesterov", "--lr-milestones"],
                "admpff.training.cli_eval": ["--mode", "--trials", "--batch", "--device", "--out"],
                "admpff.training.datasets.synthetic": ["--ids", "--per-cam", "--seed", "--size"],
                "admpff.runtime.reid": ["--detect-every", "--threshold", "--embed-every", "--mean-of",
                                        "--enroll-modality", "--out"]}[module]
    for flag in expected:
        assert flag in options and "default" in options[flag], (flag, options.get(flag))
