"""Tests of the generated cross-modal data set (admpff.training.datasets.synthetic).  CPU only."""
from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from admpff.training.datasets import synthetic as syn
from admpff.training.datasets.synthetic import (INFRARED, SYSU_IR_CAMS, SYSU_RGB_CAMS, TOP, VISIBLE, Pose,
                                               generic_camera, make_identity, render_image, render_video,
                                               write_regdb, write_sysu)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _channels_equal(img: np.ndarray) -> bool:
    return bool((img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all())


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "SYSU-MM01"
    write_sysu(root, num_ids=16, images_per_cam=2, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "RegDB"
    write_regdb(root, num_ids=8, images_per_modality=10, seed=0, workers=1)
    return root


# ------------------------------------------------------------------------------------ determinism

def test_same_seed_gives_byte_identical_files_and_other_seed_differs(sysu_root, tmp_path):
    again = tmp_path / "again"
    write_sysu(again, num_ids=16, images_per_cam=2, seed=0, workers=1)
    assert _tree(again) == _tree(sysu_root)

    other = tmp_path / "other"
    write_sysu(other, num_ids=16, images_per_cam=2, seed=1, workers=1)
    a, b = _tree(sysu_root), _tree(other)
    common = sorted(set(a) & set(b) - {k for k in a if k.startswith("exp")})
    assert common, "two seeds should share some image paths"
    assert all(a[k] != b[k] for k in common)


def test_subset_reproduces_the_same_images(sysu_root, tmp_path):
    # Every image is seeded by (seed, pid, modality, camera, index): fewer ids or images per camera
    # gives the same bytes for what they share.
    small = tmp_path / "small"
    write_sysu(small, num_ids=5, images_per_cam=1, seed=0, workers=1)
    images = [p for p in small.rglob("*.jpg")]
    assert images
    for p in images:
        rel = p.relative_to(small)
        assert filecmp.cmp(p, sysu_root / rel, shallow=False), rel


def test_worker_processes_do_not_change_the_bytes(tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    write_regdb(serial, num_ids=20, images_per_modality=10, seed=3, workers=1, trials=1)
    write_regdb(parallel, num_ids=20, images_per_modality=10, seed=3, workers=2, trials=1)
    assert _tree(serial) == _tree(parallel)


# ------------------------------------------------------------------------------------ SYSU layout

def _read_ids(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert len(lines) == 1, f"{path.name} must be one line"
    return [int(t) for t in lines[0].split(",")]


def test_sysu_layout(sysu_root):
    assert sorted(p.name for p in sysu_root.iterdir()) == ["cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "exp"]
    splits = {name: _read_ids(sysu_root / "exp" / f"{name}_id.txt") for name in ("train", "val", "test")}
    assert all(splits.values())
    assert not set(splits["train"]) & set(splits["val"])
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["val"]) & set(splits["test"])
    assert sorted(sum(splits.values(), [])) == list(range(1, 17))

    def images(cam, pid):
        folder = sysu_root / f"cam{cam}" / f"{pid:04d}"
        return sorted(folder.glob("*.jpg")) if folder.is_dir() else []

    missing_some = 0
    for pid in range(1, 17):
        rgb = [c for c in SYSU_RGB_CAMS if images(c, pid)]
        ir = [c for c in SYSU_IR_CAMS if images(c, pid)]
        assert rgb and ir, f"pid {pid} needs both modalities (rgb {rgb}, ir {ir})"
        missing_some += len(rgb) + len(ir) < 6
        for c in rgb + ir:
            assert [p.name for p in images(c, pid)] == ["0001.jpg", "0002.jpg"]
    assert missing_some > 0, "as in SYSU, some ids should be missing from some cameras"

    for cam in range(1, 7):
        for folder in (sysu_root / f"cam{cam}").iterdir():
            assert len(folder.name) == 4 and folder.name.isdigit()
        paths = sorted((sysu_root / f"cam{cam}").glob("*/*.jpg"))
        equal = [_channels_equal(cv2.imread(str(p))) for p in paths]
        if cam in SYSU_IR_CAMS:
            assert all(equal), f"cam{cam} is infrared: its images must be grey"
        else:
            assert not any(equal), f"cam{cam} is RGB: its images must be in colour"


def test_sysu_readers_accept_the_layout(sysu_root, regdb_root):
    """The project's own readers load the generated sets (skipped where they are not present)."""
    sysu_mod = pytest.importorskip("admpff.training.datasets.sysu")
    regdb_mod = pytest.importorskip("admpff.training.datasets.regdb")
    data = sysu_mod.SYSUMM01(sysu_root)
    assert data.num_classes == len(_read_ids(sysu_root / "exp" / "train_id.txt")) + \
        len(_read_ids(sysu_root / "exp" / "val_id.txt"))
    assert data.query().size > 0 and data.gallery().size > 0
    reg = regdb_mod.RegDB(regdb_root, trial=1)
    assert reg.num_classes == 4


def test_writer_refuses_a_non_empty_root_and_leaves_no_staging_folder(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_regdb(root, num_ids=2, images_per_modality=1, trials=1)
    assert (root / "keep.txt").read_text() == "mine"

    write_regdb(root, num_ids=2, images_per_modality=1, trials=1, overwrite=True)
    assert not (root / "keep.txt").exists() and (root / "idx").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]   # no .tmp- or .old- left behind

    # A failure midway removes the staging folder and leaves nothing at ROOT.
    with pytest.raises(ValueError):
        write_sysu(tmp_path / "bad", num_ids=3, images_per_cam=1, image_size=(8, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


# ----------------------------------------------------------------------------------- RegDB layout

def test_regdb_layout(regdb_root):
    ids = sorted(int(p.name) for p in (regdb_root / "Visible").iterdir())
    assert ids == list(range(1, 9))
    for pid in ids:
        vis = sorted((regdb_root / "Visible" / str(pid)).glob("*.bmp"))
        th = sorted((regdb_root / "Thermal" / str(pid)).glob("*.bmp"))
        assert len(vis) == 10 and len(th) == 10
        assert all("_v_" in p.name for p in vis) and all("_t_" in p.name for p in th)
        assert _channels_equal(cv2.imread(str(th[0]))) and not _channels_equal(cv2.imread(str(vis[0])))

    splits = set()
    for trial in range(1, 11):
        lists = {}
        for part in ("train", "test"):
            for mod in ("visible", "thermal"):
                lines = (regdb_root / "idx" / f"{part}_{mod}_{trial}.txt").read_text().splitlines()
                entries = [line.rsplit(" ", 1) for line in lines]
                assert all((regdb_root / rel).is_file() for rel, _ in entries)
                lists[part, mod] = [(rel, int(label)) for rel, label in entries]
        train_ids = {int(rel.split("/")[1]) for rel, _ in lists["train", "visible"]}
        test_ids = {int(rel.split("/")[1]) for rel, _ in lists["test", "visible"]}
        assert not train_ids & test_ids and train_ids | test_ids == set(ids)
        assert {int(rel.split("/")[1]) for rel, _ in lists["train", "thermal"]} == train_ids
        assert sorted({label for _, label in lists["train", "visible"]}) == list(range(len(train_ids)))
        assert all(label == int(rel.split("/")[1]) - 1 for rel, label in lists["test", "thermal"])
        splits.add(tuple(sorted(train_ids)))
    assert len(splits) > 5, "trials should use different random splits"


# -------------------------------------------------------------------------------------- modalities

THERMAL = generic_camera(INFRARED)   # RegDB's thermal camera; SYSU's cameras 3 and 6 are near-infrared


def _top_mean(ident, index=2, camera=THERMAL) -> float:
    img, labels = render_image(ident, INFRARED, camera=camera, index=index, return_labels=True, pose=Pose("front"))
    return float(img[..., 0][labels == TOP].mean())


def test_thermal_follows_fabric_not_colour():
    base = replace(make_identity(5), pattern="plain", sleeves="long")
    thin = replace(base, top_fabric="tshirt", top_thickness=0.1, top_rgb=(40.0, 40.0, 40.0))
    thick = replace(thin, top_fabric="down_coat", top_thickness=0.9)
    # Same colour, different fabric: clearly different IR brightness (thin fabric shows body heat).
    assert _top_mean(thin) - _top_mean(thick) > 50

    # Different colour, same fabric: the thermal image does not change at all, the visible one does.
    red, blue = replace(thin, top_rgb=(200.0, 20.0, 20.0)), replace(thin, top_rgb=(20.0, 40.0, 200.0))
    assert np.array_equal(render_image(red, INFRARED, camera=THERMAL, index=1),
                          render_image(blue, INFRARED, camera=THERMAL, index=1))
    assert not np.array_equal(render_image(red, VISIBLE, camera=1, index=1), render_image(blue, VISIBLE, camera=1, index=1))

    # Over a population: thermal brightness of the top tracks thickness, not the colour's luminance
    # (measured: r = -0.96 with thickness, 0.09 with luminance over 60 ids).
    idents = [make_identity(pid) for pid in range(1, 41)]
    ir = [_top_mean(i, index=0) for i in idents]
    luma = [np.dot(i.top_rgb, (0.299, 0.587, 0.114)) for i in idents]
    thickness = [i.top_thickness for i in idents]
    assert np.corrcoef(thickness, ir)[0, 1] < -0.8
    assert abs(np.corrcoef(luma, ir)[0, 1]) < 0.35


def test_near_infrared_follows_dye_reflectance_not_fabric_or_hue():
    base = replace(make_identity(5), pattern="plain", sleeves="long", top_thickness=0.1)
    # SYSU's IR cameras see reflected 850 nm light: the dye's NIR reflectance sets the brightness ...
    assert _top_mean(replace(base, nir_top=0.8), camera=3) - _top_mean(replace(base, nir_top=0.15), camera=3) > 50
    # ... and neither the fabric's thickness (warmth) nor the visible colour does.
    for changed in (replace(base, top_thickness=0.3), replace(base, top_rgb=(20.0, 40.0, 200.0))):
        assert np.array_equal(render_image(base, INFRARED, camera=3, index=1),
                              render_image(changed, INFRARED, camera=3, index=1))

    # Over a population the dyes tie NIR brightness to red-weighted lightness only partly: NIR-transparent
    # dyes look bright whatever their colour (measured over 60 ids: r = 0.51 with lightness, 0.02 with
    # thickness, 0.74 with the dye reflectance itself).
    idents = [make_identity(pid) for pid in range(1, 61)]
    nir = [_top_mean(i, index=0, camera=3) for i in idents]
    lightness = [np.dot(i.top_rgb, (0.6, 0.3, 0.1)) for i in idents]
    assert 0.3 < np.corrcoef(lightness, nir)[0, 1] < 0.8
    assert abs(np.corrcoef([i.top_thickness for i in idents], nir)[0, 1]) < 0.3
    assert np.corrcoef([i.nir_top for i in idents], nir)[0, 1] > 0.6


def test_infrared_images_are_one_channel_replicated_and_visible_are_colour():
    ident = make_identity(3)
    for cam in SYSU_IR_CAMS:
        img = render_image(ident, INFRARED, camera=cam, index=0)
        assert img.shape == (128, 64, 3) and img.dtype == np.uint8 and _channels_equal(img)
    img = render_image(ident, VISIBLE, camera=1, index=0, size=(96, 40))
    assert img.shape == (96, 40, 3) and not _channels_equal(img)
    with pytest.raises(ValueError):
        render_image(ident, VISIBLE, camera=3)     # camera 3 is an infrared camera


def _gray_pixels(img: np.ndarray) -> np.ndarray:
    g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), (16, 32), interpolation=cv2.INTER_AREA)
    g = g.ravel() - g.mean()
    return g / (np.linalg.norm(g) + 1e-6)


_HOG = cv2.HOGDescriptor((64, 128), (16, 16), (8, 8), (8, 8), 9)


def _hog(img: np.ndarray) -> np.ndarray:
    f = _HOG.compute(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)).ravel()
    f = f - f.mean()
    return f / (np.linalg.norm(f) + 1e-6)


def test_identity_is_learnable_but_cross_modal_is_not_trivial():
    """Rank-1 of crude features over 30 ids (chance 0.033), query camera vs another camera.

    Measured (seeds 0, 1, 2): raw grey pixels same-modality 0.30, 0.38, 0.36; visible -> near-infrared
    (SYSU cameras) 0.18, 0.28, 0.28: NIR keeps a partial trace of lightness, as the real SYSU-MM01's does
    (why grey augmentation helps there), but most queries still fail; visible -> thermal (RegDB's camera)
    0.07, 0.03, 0.08.  HOG across modalities: NIR 0.21, 0.27, 0.33; thermal 0.17, 0.21, 0.31.
    """
    n_ids, per_cam = 30, 3
    thermal = generic_camera(INFRARED)
    images = {}
    for pid in range(1, n_ids + 1):
        ident = make_identity(pid)
        for cam in (1, 4, 3, 6, "thermal"):
            modality = INFRARED if cam in SYSU_IR_CAMS or cam == "thermal" else VISIBLE
            for k in range(per_cam):
                images[pid, cam, k] = render_image(ident, modality, camera=thermal if cam == "thermal" else cam,
                                                   index=k)

    def rank1(q_cam, g_cam, feature):
        keys = [(pid, k) for pid in range(1, n_ids + 1) for k in range(per_cam)]
        q = np.stack([feature(images[pid, q_cam, k]) for pid, k in keys])
        g = np.stack([feature(images[pid, g_cam, k]) for pid, k in keys])
        pids = np.array([pid for pid, _ in keys])
        return float((pids[(q @ g.T).argmax(1)] == pids).mean())

    chance = 1.0 / n_ids
    same = (rank1(1, 4, _gray_pixels) + rank1(3, 6, _gray_pixels)) / 2
    nir = (rank1(1, 3, _gray_pixels) + rank1(4, 6, _gray_pixels)) / 2
    therm = (rank1(1, "thermal", _gray_pixels) + rank1(4, "thermal", _gray_pixels)) / 2
    assert same > 5 * chance, f"same-modality rank-1 {same:.3f} should be well above chance {chance:.3f}"
    assert nir < 0.7 * same and nir < 0.3, f"raw-pixel visible->NIR rank-1 {nir:.3f} should stay far from solved"
    assert therm < 0.35 * same, f"raw-pixel visible->thermal rank-1 {therm:.3f} should be near chance"
    for name, (ir_a, ir_b) in (("NIR", (3, 6)), ("thermal", ("thermal", "thermal"))):
        cross_hog = (rank1(1, ir_a, _hog) + rank1(4, ir_b, _hog)) / 2
        assert cross_hog > 2.5 * chance, f"shape features should match across modalities ({name}: {cross_hog:.3f})"


# ------------------------------------------------------------------------------------------ video

def test_render_video_is_readable_with_the_requested_frames(tmp_path):
    path = tmp_path / "clip.avi"
    summary = render_video(path, seconds=2.0, fps=10, size=(240, 320), seed=0, people=4, night_after=1.5)
    assert summary.frames == 20 and summary.infrared_frames == list(range(15, 20))
    assert summary.boxes, "pedestrians should be in view"
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 20 and frames[0].shape == (240, 320, 3)
    # The night segment is grey (MJPG may perturb the channels by a few levels), the day one is not.
    day, night = frames[5].astype(int), frames[18].astype(int)
    assert np.abs(night[..., 0] - night[..., 2]).mean() < 2 < np.abs(day[..., 0] - day[..., 2]).mean()


# -------------------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("argv", [
    ["nope", "ROOT"],
    ["sysu", "ROOT", "--ids", "1"],
    ["sysu", "ROOT", "--size", "big"],
    ["regdb", "ROOT", "--per-cam", "0"],
    ["sysu"],
])
def test_cli_bad_arguments_give_one_line_and_exit_2(argv, tmp_path, capsys):
    argv = [str(tmp_path / "out") if a == "ROOT" else a for a in argv]
    assert syn.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("admpff-make-data: error:"), err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_non_empty_root_and_writes_with_force(tmp_path, capsys):
    root = tmp_path / "regdb"
    root.mkdir()
    (root / "x").write_text("")
    assert syn.main(["regdb", str(root), "--ids", "2", "--per-cam", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert syn.main(["regdb", str(root), "--ids", "2", "--per-cam", "1", "--size", "64x32", "--force"]) == 0
    assert "regdb: 2 ids" in capsys.readouterr().out
    assert cv2.imread(str(next((root / "Thermal").rglob("*.bmp")))).shape == (64, 32, 3)


def test_cli_entry_point_runs_as_a_process(tmp_path):
    """The console command itself: a bad argument is one stderr line and exit code 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "admpff.training.datasets.synthetic", "sysu", str(tmp_path / "o"),
                           "--seed", "-1"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
