"""Training: eq. (11) schedule, config layering, augmentation, checkpoints, exact resume, and learning.

Everything runs on the CPU with a tiny ADMPFF-Net (ResNet-18 trunk, 96x48 input, 32-d stripes, a
one-row LIE stripe) on data generated in SYSU-MM01's official layout, read by the real reader.
"""
import os

import numpy as np
import pytest
import torch

from admpff.training.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from admpff.training.config import ConfigError, resolve_config
from admpff.training.datasets.synthetic import write_sysu
from admpff.training.engine import Trainer, WarmupMultiStep, build_optimizer, build_scheduler
from admpff.training.model import ModelConfig, build_model
from admpff.training.transforms import TrainAugment, channel_adaptive_gray, pad_random_crop

torch.set_num_threads(2)

TINY = ["--backbone", "resnet18", "--size", "96x48", "--dim", "32", "--en-rows", "1", "--pretrained", "none",
        "--workers", "0", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "sysu"
    write_sysu(root, num_ids=60, images_per_cam=4, seed=1)
    return str(root)


def tiny_config(root, out, *extra):
    config, _ = resolve_config(["--dataset", "sysu", "--data", root, "--out", str(out),
                                "--cache-dir", os.path.join(root, ".cache"), *TINY, *extra])
    return config


# -- schedule -------------------------------------------------------------------------------------
def test_schedule_follows_eq_11_at_the_milestones():
    config, _ = resolve_config(["--dataset", "sysu", "--data", "x"])
    model = build_model(ModelConfig(num_classes=4, backbone="resnet18", height=96, width=48, dim=8, en_rows=1))
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    head = {g["name"]: g for g in optimizer.param_groups}
    expected = {0: 0.01, 4: 0.05, 9: 0.1, 10: 0.1, 19: 0.1, 20: 0.01, 49: 0.01, 50: 0.001, 79: 0.001}
    seen = {}
    for epoch in range(80):
        seen[epoch] = (head["head"]["lr"], head["backbone"]["lr"])
        optimizer.step()
        scheduler.step()
    for epoch, lr in expected.items():
        assert seen[epoch][0] == pytest.approx(lr), epoch
        assert seen[epoch][1] == pytest.approx(lr * 0.1), epoch   # backbone at 0.1x (HcTri)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 5e-4


def test_scaled_schedule_for_short_runs():
    config, _ = resolve_config(["--dataset", "regdb", "--data", "x", "--epochs", "8", "--scale-schedule"])
    assert config.schedule() == (1, [2, 5])
    f = WarmupMultiStep(*config.schedule(), 0.1)
    assert [f(e) for e in range(8)] == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


# -- config ---------------------------------------------------------------------------------------
def test_presets_yaml_and_flags_layer_in_order(tmp_path):
    config, _ = resolve_config(["--dataset", "regdb", "--data", "x"])
    assert (config.alpha, config.beta, config.batch_p, config.batch_k) == (3, 6, 8, 4)
    config, _ = resolve_config(["--dataset", "sysu", "--data", "x"])
    assert (config.alpha, config.beta, config.batch_p, config.batch_k) == (1, 1, 6, 8)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("dataset: regdb\ndata: /d\nbatch-p: 5\nalpha: 2.5\nlr_milestones: [30, 60]\n")
    config, explicit = resolve_config(["--config", str(yaml_file), "--alpha", "4"])
    assert (config.dataset, config.batch_p, config.batch_k, config.alpha, config.beta) == ("regdb", 5, 4, 4.0, 6.0)
    assert config.milestones == [30, 60] and explicit == {"alpha": 4.0}
    yaml_file.write_text("dataset: sysu\ndata: /d\nbatchp: 5\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve_config(["--config", str(yaml_file)])
    with pytest.raises(ConfigError, match="--data"):
        resolve_config(["--dataset", "sysu"])


def test_example_configs_resolve():
    configs = os.path.join(os.path.dirname(__file__), "..", "configs")
    for name, dataset in (("sysu.yaml", "sysu"), ("regdb.yaml", "regdb"), ("synthetic.yaml", "sysu")):
        config, _ = resolve_config(["--config", os.path.join(configs, name), "--data", "x"])
        assert config.dataset == dataset


# -- augmentation ---------------------------------------------------------------------------------
def test_pad_crop_matches_padding_then_cropping():
    image = np.random.default_rng(0).integers(0, 256, (24, 12, 3), dtype=np.uint8)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        top, left = rng.integers(0, 9), rng.integers(0, 9)
        out = pad_random_crop(image, np.random.default_rng(seed), 4)
        assert np.array_equal(out, padded[top:top + 24, left:left + 12])


def test_channel_augmentation_and_determinism():
    image = np.random.default_rng(1).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    kinds = set()
    for seed in range(40):
        out = channel_adaptive_gray(image, np.random.default_rng(seed))
        if out is image:
            kinds.add("unchanged")
            continue
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        match = [c for c in range(3) if np.array_equal(out[..., 0], image[..., c])]
        kinds.add(f"channel{match[0]}" if match else "gray")
    assert kinds == {"unchanged", "gray", "channel0", "channel1", "channel2"}
    augment = TrainAugment(pad=10, channel_aug=True)
    a = augment(image, np.random.default_rng(5))
    b = augment(image, np.random.default_rng(5))
    assert a.dtype == torch.uint8 and a.shape == (3, 16, 8) and torch.equal(a, b)


# -- checkpoints ----------------------------------------------------------------------------------
def test_atomic_save_and_corrupt_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    atomic_torch_save({"x": torch.ones(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]          # no temporary file left behind
    with pytest.raises(CheckpointError, match="not an admpff"):
        load_checkpoint(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_after_one_epoch_equals_an_uninterrupted_run(sysu_root, tmp_path):
    """Measured: the resumed run's final weights are bit-identical (torch.equal) to the uninterrupted run's."""
    extra = ["--epochs", "2", "--batch-p", "3", "--batch-k", "2", "--max-steps-per-epoch", "3", "--lr", "0.02",
             "--lr-warmup", "2", "--channel-aug", "--seed", "5"]
    straight = Trainer(tiny_config(sysu_root, tmp_path / "a", *extra))
    straight.fit()
    straight.close()

    first = Trainer(tiny_config(sysu_root, tmp_path / "b", *extra))
    first.fit(until_epoch=1)                      # "killed" after epoch 1
    first.close()
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["epoch"] == 1
    for key in ("config", "model", "epoch", "optimizer", "scheduler", "sampler", "rng", "admpff_version"):
        assert key in ckpt
    # the checkpoint alone rebuilds the network (what export relies on)
    rebuilt = build_model(ckpt["config"]["model"])
    rebuilt.load_state_dict(ckpt["model"])
    assert ckpt["config"]["model"]["pretrained"] is None

    config, _ = resolve_config(["--resume", str(tmp_path / "b" / "last.pt")], base=ckpt["config"]["train"])
    resumed = Trainer(config, resume=ckpt)
    assert resumed.start_epoch == 1
    resumed.fit()
    resumed.close()

    final_a = load_checkpoint(tmp_path / "a" / "last.pt")
    final_b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert final_a["epoch"] == final_b["epoch"] == 2
    for name, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][name]), name
    assert final_a["optimizer"]["param_groups"][1]["lr"] == final_b["optimizer"]["param_groups"][1]["lr"]
    log_b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert sum('"event": "epoch"' in line for line in log_b) == 2     # one epoch record per epoch, across the resume


# -- learning -------------------------------------------------------------------------------------
#: the from-scratch recipe of the learning test (see the README, "Training from random weights")
FROM_SCRATCH = ["--batch-p", "4", "--batch-k", "4", "--lr", "0.02", "--backbone-lr-mult", "1", "--lr-warmup", "1",
                "--lr-milestones", "100", "--pad", "4", "--triplet-norm-feat"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One short from-scratch run on generated data, evaluated on held-out identities before and after.

    SYSU layout, 80 generated ids re-split into 60 training ids (59 train + 1 val) and 20 held-out test ids,
    2 images per camera; ResNet-18 trunk at 96x48, 32-d stripes; the full MGJ loss with the triplet terms on
    L2-normalised features, one learning rate (0.02) for backbone and head, P4 x K4, 12 epochs of 16 steps
    (about 3 minutes on 2 cores).  Real reader, AGW's eval_sysu, all-search, 10 gallery trials.
    """
    from admpff.training.datasets.sysu import SYSUMM01
    from admpff.training.features import evaluate_sysu

    tmp_path = tmp_path_factory.mktemp("learning")
    root = tmp_path / "sysu"
    write_sysu(root, num_ids=80, images_per_cam=2, seed=2)
    ids = list(range(1, 81))  # re-split: many training classes, 20 held-out identities
    (root / "exp" / "train_id.txt").write_text(",".join(map(str, ids[:59])) + "\n")
    (root / "exp" / "val_id.txt").write_text(f"{ids[59]}\n")
    (root / "exp" / "test_id.txt").write_text(",".join(map(str, ids[60:])) + "\n")
    config = tiny_config(str(root), tmp_path / "run", "--epochs", "12", "--max-steps-per-epoch", "16", *FROM_SCRATCH)
    trainer = Trainer(config)
    reader = SYSUMM01(str(root))

    def held_out():
        result = evaluate_sysu(trainer.model, reader, mode="all", trials=10, cache_dir=config.cache_dir,
                               contract=trainer.contract, progress=False)
        return {k: result["summary"][k] for k in ("mAP", "rank1")}

    before = held_out()
    summary = trainer.fit()
    trainer.close()
    return {"before": before, "after": held_out(), "history": summary["history"]}


@pytest.mark.slow
def test_short_training_lowers_the_loss_without_collapse(short_run):
    """Every epoch's triplet terms stay off the margin (no collapse) and the summed loss falls."""
    history = short_run["history"]
    assert not any(r.get("collapsed") for r in history)
    first = np.mean([v for k, v in history[0]["terms"].items() if k.startswith("tri/")])
    last = np.mean([v for k, v in history[-1]["terms"].items() if k.startswith("tri/")])
    assert last < 0.8 * first, (first, last)
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.slow
def test_short_training_raises_map_well_above_untrained_on_heldout_identities(short_run):
    """Held-out mAP of the trained model at least 10 points above the untrained one's (README: measured)."""
    before, after = short_run["before"], short_run["after"]
    assert after["mAP"] >= before["mAP"] + 10.0, (before, after)
    assert after["rank1"] > before["rank1"], (before, after)
