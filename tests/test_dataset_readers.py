"""SYSU-MM01 / RegDB readers and the image cache, on tiny official layouts written in tmp_path."""
import logging
import os
import random

import cv2
import numpy as np
import pytest

from admpff.runtime.contract import InputContract
from admpff.runtime.preprocess import resize_crop
from admpff.training.datasets.cache import build_image_cache
from admpff.training.datasets.common import DatasetError
from admpff.training.datasets.regdb import RegDB
from admpff.training.datasets.sysu import SYSUMM01

_rng = np.random.default_rng(0)


def write_jpg(path, h=16, w=8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), _rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def write_ids(root, name, ids):
    os.makedirs(root / "exp", exist_ok=True)
    (root / "exp" / name).write_text(",".join(str(i) for i in ids) + "\n")


# Per id: {cam: number of images}.
SYSU_TRAIN = {
    1: {1: 2, 2: 1, 3: 2, 4: 1, 5: 1, 6: 1},
    2: {1: 1, 3: 1, 6: 2},
    3: {2: 2, 4: 1, 3: 1},          # no cam5 / cam6 folder
    4: {1: 2, 5: 1},                # no IR at all: visible dropped, no label
}
SYSU_TEST = {
    10: {1: 3, 2: 3, 3: 2, 4: 3, 5: 3, 6: 2},
    11: {1: 3, 4: 2, 3: 1},         # no cam2 / cam5 / cam6
    12: {2: 3, 6: 1, 5: 0},         # cam5 folder exists but is empty
}


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("SYSU-MM01")
    for layout in (SYSU_TRAIN, SYSU_TEST):
        for pid, cams in layout.items():
            for cam, count in cams.items():
                folder = root / f"cam{cam}" / f"{pid:04d}"
                folder.mkdir(parents=True, exist_ok=True)
                for n in range(count):
                    write_jpg(folder / f"{n + 1:04d}.jpg")
    write_ids(root, "train_id.txt", [1, 3, 2])
    write_ids(root, "val_id.txt", [4])
    write_ids(root, "test_id.txt", [11, 10, 12])
    return root


def count(layout, cams):
    return sum(n for per_cam in layout.values() for cam, n in per_cam.items() if cam in cams)


def test_sysu_training_lists(sysu_root):
    ds = SYSUMM01(sysu_root)
    assert ds.train_ids == [1, 2, 3, 4] and ds.test_ids == [10, 11, 12]
    assert ds.pid2label == {1: 0, 2: 1, 3: 2}  # sorted ids with IR images
    assert ds.num_classes == 3
    assert len(ds.train_infrared) == count(SYSU_TRAIN, {3, 6})
    dropped = sum(SYSU_TRAIN[4].values())
    assert len(ds.train_visible) == count(SYSU_TRAIN, {1, 2, 4, 5}) - dropped
    assert ds.dropped_visible == dropped
    assert {cam for _, _, cam in ds.train_visible} == {1, 2, 4, 5}
    assert {cam for _, _, cam in ds.train_infrared} == {3, 6}
    for path, label, cam in ds.train_visible + ds.train_infrared:
        pid = int(os.path.basename(os.path.dirname(path)))
        assert label == ds.pid2label[pid]
        assert os.path.basename(os.path.dirname(os.path.dirname(path))) == f"cam{cam}"
    # AGW order: sorted ids, then cameras, then sorted files.
    assert [p for p, _, _ in ds.train_visible][:3] == [
        str(sysu_root / "cam1" / "0001" / "0001.jpg"), str(sysu_root / "cam1" / "0001" / "0002.jpg"),
        str(sysu_root / "cam2" / "0001" / "0001.jpg")]


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_sysu_query_is_every_ir_image_in_both_modes(sysu_root, mode):
    q = SYSUMM01(sysu_root).query(mode)
    assert len(q.paths) == count(SYSU_TEST, {3, 6}) == q.pids.size == q.camids.size
    assert set(q.camids.tolist()) == {3, 6}
    assert list(q.pids) == sorted(q.pids)
    assert q.pids.dtype == np.int64


def agw_gallery(root, ids, cams, trial):
    """Re-implementation of AGW's process_gallery_sysu with the global random module."""
    random.seed(trial)
    files = []
    for pid in sorted("%04d" % i for i in ids):
        for cam in cams:
            img_dir = os.path.join(str(root), f"cam{cam}", pid)
            if os.path.isdir(img_dir) and os.listdir(img_dir):
                files.append(random.choice(sorted(img_dir + "/" + i for i in os.listdir(img_dir))))
    return files


def test_sysu_gallery_single_shot_and_agw_identical(sysu_root):
    ds = SYSUMM01(sysu_root)
    g = ds.gallery("all", trial=0)
    # One image per (id, camera with images): id10 x4 cams, id11 cams 1,4, id12 cam2 (cam5 empty).
    pairs = list(zip(g.pids.tolist(), g.camids.tolist()))
    assert pairs == [(10, 1), (10, 2), (10, 4), (10, 5), (11, 1), (11, 4), (12, 2)]
    for trial in range(10):
        g = ds.gallery("all", trial)
        assert [os.path.normpath(p) for p in g.paths] == \
               [os.path.normpath(p) for p in agw_gallery(sysu_root, [10, 11, 12], [1, 2, 4, 5], trial)]
    assert ds.gallery("all", 3).paths == ds.gallery("all", 3).paths  # deterministic
    assert len({tuple(ds.gallery("all", t).paths) for t in range(10)}) > 1  # trials differ


def test_sysu_gallery_does_not_touch_global_random(sysu_root):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    SYSUMM01(sysu_root).gallery("all", trial=5)
    assert random.random() == expected


def test_sysu_indoor_gallery_cams(sysu_root):
    ds = SYSUMM01(sysu_root)
    g = ds.gallery("indoor", trial=1)
    assert set(g.camids.tolist()) == {1, 2}
    assert list(zip(g.pids.tolist(), g.camids.tolist())) == [(10, 1), (10, 2), (11, 1), (12, 2)]
    assert g.paths == agw_gallery(sysu_root, [10, 11, 12], [1, 2], 1)
    with pytest.raises(ValueError, match="mode"):
        ds.gallery("outdoor", 0)


def test_sysu_heldout_split(sysu_root):
    ds = SYSUMM01(sysu_root)
    val = ds.heldout_split(fraction=0.34, seed=0)
    assert len(val.test_ids) == 1 and val.test_ids[0] in ds.pid2label
    assert set(val.train_ids) == set(ds.train_ids) - set(val.test_ids)
    assert val.num_classes == 2 and sorted(val.pid2label.values()) == [0, 1]
    q = val.query("all")
    assert set(q.pids.tolist()) == set(val.test_ids)
    assert ds.heldout_split(0.34, 0).test_ids == val.test_ids


def test_sysu_errors(tmp_path, sysu_root):
    with pytest.raises(DatasetError, match="root"):
        SYSUMM01(tmp_path / "nope")
    root = tmp_path / "sysu"
    root.mkdir()
    write_ids(root, "train_id.txt", [1])
    with pytest.raises(DatasetError, match="val_id.txt"):
        SYSUMM01(root)
    write_ids(root, "val_id.txt", [])
    with pytest.raises(DatasetError, match="empty id list"):
        SYSUMM01(root)
    write_ids(root, "val_id.txt", [2])
    write_ids(root, "test_id.txt", [3])
    with pytest.raises(DatasetError, match="no .* training images"):
        SYSUMM01(root)
    assert issubclass(DatasetError, ValueError)


# ------------------------------------------------------------------------------------------------
# RegDB
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("RegDB")
    lists = {}
    for split, ids in (("train", [5, 7]), ("test", [100, 101, 102])):
        for modality, letter, folder in (("visible", "v", "Visible"), ("thermal", "t", "Thermal")):
            lines = []
            for pid in ids:
                for n in range(2):
                    rel = f"{folder}/{pid}/male_back_{letter}_{pid:05d}_{n}.bmp"
                    write_jpg(root / rel)
                    lines.append(f"{rel} {pid}")
            lists[(split, modality)] = lines
    (root / "idx").mkdir()
    for trial in (1, 2):
        for (split, modality), lines in lists.items():
            (root / "idx" / f"{split}_{modality}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_regdb_train_and_test(regdb_root):
    ds = RegDB(regdb_root, trial=1)
    assert ds.num_classes == 2
    assert len(ds.train_visible) == len(ds.train_infrared) == 4
    assert {l for _, l, _ in ds.train_visible} == {0, 1}  # 5, 7 relabelled
    assert {c for _, _, c in ds.train_visible} == {1} and {c for _, _, c in ds.train_infrared} == {2}
    assert all(os.path.isfile(p) for p, _, _ in ds.train_visible + ds.train_infrared)
    assert "/Thermal/" in ds.train_infrared[0][0]

    query, gallery = ds.test()
    assert len(query.paths) == len(gallery.paths) == 6
    assert set(query.camids.tolist()) == {1} and set(gallery.camids.tolist()) == {2}
    assert set(query.pids.tolist()) == {100, 101, 102}
    q2, g2 = ds.test("thermal_to_visible")
    assert q2.paths == gallery.paths and g2.paths == query.paths
    with pytest.raises(ValueError, match="mode"):
        ds.test("sideways")


@pytest.mark.parametrize("trial", [0, 11, "1", 1.5])
def test_regdb_bad_trial(regdb_root, trial):
    with pytest.raises(DatasetError, match="1..10"):
        RegDB(regdb_root, trial=trial)


def test_regdb_missing_files(tmp_path, regdb_root):
    with pytest.raises(DatasetError, match="root"):
        RegDB(tmp_path / "nope", trial=1)
    with pytest.raises(DatasetError, match="train_visible_3.txt"):
        RegDB(regdb_root, trial=3)


# ------------------------------------------------------------------------------------------------
# Image cache
# ------------------------------------------------------------------------------------------------
SMALL = InputContract(height=32, width=16)


def test_cache_build_reuse_and_corrupt_image(tmp_path, caplog):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / "img" / f"{i}.jpg"))
        write_jpg(paths[-1], h=40 + i, w=20)
    corrupt = str(tmp_path / "img" / "corrupt.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"\xff\xd8 this is not a jpeg")
    sources = paths[:2] + [corrupt] + paths[2:]
    labels = np.array([0, 1, 2, 3, 4])
    cache_file = tmp_path / "cache" / "train.npy"

    with caplog.at_level(logging.WARNING):
        cache = build_image_cache(sources, cache_file, contract=SMALL, progress=False)
    assert len(cache) == 4 and cache.skipped == [corrupt] and cache.num_skipped == 1
    assert "corrupt.jpg" in caplog.text and "skipped 1" in caplog.text
    assert cache.images.shape == (4, 32, 16, 3) and cache.images.dtype == np.uint8
    assert not cache.images.flags.writeable
    assert cache.paths == paths
    np.testing.assert_array_equal(cache.select(labels), [0, 1, 3, 4])
    np.testing.assert_array_equal(cache.images[2], resize_crop(cv2.imread(paths[2]), SMALL))
    assert sorted(os.listdir(cache_file.parent)) == ["train.npy", "train.npy.json"]  # no temp files

    # Up to date: reused without decoding anything.
    mtime = os.stat(cache_file).st_mtime_ns
    again = build_image_cache(sources, cache_file, contract=SMALL, progress=False)
    assert os.stat(cache_file).st_mtime_ns == mtime and again.paths == paths

    # A changed source makes the cache stale: rebuilt.
    write_jpg(paths[0], h=50, w=25)
    os.utime(paths[0], ns=(mtime + 10**9, mtime + 10**9))
    rebuilt = build_image_cache(sources, cache_file, contract=SMALL, progress=False)
    np.testing.assert_array_equal(rebuilt.images[0], resize_crop(cv2.imread(paths[0]), SMALL))

    # A different contract size is a different cache, too.
    bigger = build_image_cache(paths, cache_file, contract=InputContract(height=64, width=32), progress=False)
    assert bigger.images.shape == (4, 64, 32, 3) and bigger.skipped == []


def test_cache_errors(tmp_path):
    with pytest.raises(DatasetError, match="no image paths"):
        build_image_cache([], tmp_path / "c.npy", contract=SMALL, progress=False)
    with pytest.raises(DatasetError, match="could be read"):
        build_image_cache([str(tmp_path / "missing.jpg")], tmp_path / "c.npy", contract=SMALL, progress=False)
    assert not (tmp_path / "c.npy").exists()
