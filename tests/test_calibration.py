"""admpff.calibration: sources, deterministic balanced selection, cache, quantizer readers (CPU, fast)."""
from __future__ import annotations

import importlib.util
import random
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from admpff.calibration import (CalibrationError, CalibrationSet, DatasetTrainSource, FolderSource, VideoSource,
                                balanced_quotas, build_calibration_set, load_or_build, parse_calib_spec)
from admpff.calibration.reader import (CalibrationDataReader, modelopt_calibration_method, ort_calibrate_method,
                                       to_modelopt_calibration_data)
from admpff.runtime.contract import DEFAULT_CONTRACT, INFRARED, VISIBLE, InputContract
from admpff.runtime.preprocess import crops_to_batch

SMALL = InputContract(height=32, width=16)  # small tensors keep the tests fast; the code path is the same
ROOT = Path(__file__).resolve().parents[1]
VTEST = next((p for p in (ROOT.parent / "shared" / "data" / "vtest.avi", Path("/work/shared/data/vtest.avi"))
              if p.is_file()), None)


def _visible_crop(rng: np.random.Generator) -> np.ndarray:
    """A coloured person-sized crop: random colour blocks (clearly non-zero chroma)."""
    blocks = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    return cv2.resize(blocks, (24, 48), interpolation=cv2.INTER_NEAREST)


def _grey_crop(rng: np.random.Generator) -> np.ndarray:
    """An infrared-like crop: three equal channels."""
    blocks = rng.integers(0, 256, size=(8, 4, 1), dtype=np.uint8)
    grey = cv2.resize(blocks, (24, 48), interpolation=cv2.INTER_NEAREST)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _write_crops(folder: Path, n_visible: int, n_grey: int, seed: int = 0, order_seed: int | None = None) -> None:
    """Write jpgs; ``order_seed`` shuffles the order in which the files are created."""
    rng = np.random.default_rng(seed)
    jobs = [(f"vis_{i:03d}.jpg", _visible_crop(rng)) for i in range(n_visible)]
    jobs += [(f"grey_{i:03d}.jpg", _grey_crop(rng)) for i in range(n_grey)]
    if order_seed is not None:
        random.Random(order_seed).shuffle(jobs)
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in jobs:
        assert cv2.imwrite(str(folder / name), image)


# -- folder source and selection ------------------------------------------------------------------------
def test_folder_auto_modality_and_exact_balance(tmp_path):
    _write_crops(tmp_path / "crops", n_visible=30, n_grey=12)
    source = FolderSource(tmp_path / "crops")
    modalities = {Path(s.origin).name.split("_")[0]: s.modality for s in source}
    assert modalities == {"vis": VISIBLE, "grey": INFRARED}

    calset = build_calibration_set([source], num_samples=20, seed=0, contract=SMALL)
    assert calset.counts == {"visible": 10, "infrared": 10}
    assert calset.images.shape == (20, 3, 32, 16) and calset.images.dtype == np.float32
    assert calset.modality.dtype == np.int32
    assert 0 <= calset.images.min() and calset.images.max() <= 255
    for origin, code in zip(calset.origins, calset.modality):
        assert code == (INFRARED if Path(origin).name.startswith("grey") else VISIBLE)
    # The tensors are exactly what the runtime's preprocessing makes of the files.
    i = 3
    expected = crops_to_batch([cv2.imread(calset.origins[i])], SMALL)[0]
    np.testing.assert_array_equal(calset.images[i], expected)


def test_balance_as_close_as_possible_when_one_modality_is_short(tmp_path):
    _write_crops(tmp_path / "crops", n_visible=30, n_grey=4)
    calset = build_calibration_set(str(tmp_path / "crops"), num_samples=20, contract=SMALL)
    assert calset.counts == {"visible": 16, "infrared": 4}
    assert balanced_quotas({0: 100, 1: 100}, 7) == {0: 4, 1: 3}
    assert balanced_quotas({0: 1, 1: 100}, 10) == {0: 1, 1: 9}


def test_modality_subfolders(tmp_path):
    # Coloured crops under infrared/ still count as infrared: the folder name decides.
    _write_crops(tmp_path / "data" / "visible", n_visible=6, n_grey=0, seed=1)
    _write_crops(tmp_path / "data" / "thermal", n_visible=5, n_grey=0, seed=2)
    calset = build_calibration_set(FolderSource(tmp_path / "data"), num_samples=100, contract=SMALL)
    assert calset.counts == {"visible": 6, "infrared": 5}
    explicit = build_calibration_set(FolderSource(tmp_path / "data" / "visible", modality="infrared"),
                                     num_samples=100, contract=SMALL)
    assert explicit.counts == {"visible": 0, "infrared": 6}


def test_selection_is_deterministic_and_independent_of_file_order(tmp_path):
    _write_crops(tmp_path / "a", n_visible=25, n_grey=25, order_seed=1)
    _write_crops(tmp_path / "b", n_visible=25, n_grey=25, order_seed=2)  # same pixels, other creation order
    first = build_calibration_set(str(tmp_path / "a"), num_samples=16, seed=7, contract=SMALL)
    again = build_calibration_set(str(tmp_path / "a"), num_samples=16, seed=7, contract=SMALL)
    other_order = build_calibration_set(str(tmp_path / "b"), num_samples=16, seed=7, contract=SMALL)
    assert first.origins == again.origins
    np.testing.assert_array_equal(first.images, again.images)
    assert [Path(o).name for o in first.origins] == [Path(o).name for o in other_order.origins]
    np.testing.assert_array_equal(first.images, other_order.images)
    other_seed = build_calibration_set(str(tmp_path / "a"), num_samples=16, seed=8, contract=SMALL)
    assert other_seed.origins != first.origins


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    _write_crops(tmp_path / "crops", n_visible=4, n_grey=4)
    (tmp_path / "crops" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "crops" / "empty.png").write_bytes(b"")
    calset = build_calibration_set(str(tmp_path / "crops"), num_samples=100, contract=SMALL)
    assert len(calset) == 8 and calset.skipped == 2
    # With a fixed modality the files are only decoded when chosen: still skipped and counted.
    fixed = build_calibration_set(FolderSource(tmp_path / "crops", modality="visible"), num_samples=100,
                                  contract=SMALL)
    assert len(fixed) == 8 and fixed.skipped == 2


def test_empty_folder_gives_the_how_to_message(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match=r"no calibration crops found in .*--calib-data a folder of person "
                                                r"crops, a video, or sysu:/regdb: training data"):
        build_calibration_set(str(tmp_path / "nothing"), contract=SMALL)


# -- test data refused ----------------------------------------------------------------------------------
def test_test_splits_are_refused(tmp_path):
    for name in ("query", "gallery", "bounding_box_test"):
        (tmp_path / name).mkdir()
        with pytest.raises(CalibrationError, match="leaks into the reported accuracy"):
            parse_calib_spec(str(tmp_path / name))
    with pytest.raises(CalibrationError, match="leaks into the reported accuracy"):
        DatasetTrainSource("sysu", tmp_path, split="test")
    with pytest.raises(CalibrationError, match="leaks into the reported accuracy"):
        parse_calib_spec(f"sysu-test:{tmp_path}")
    with pytest.raises(CalibrationError, match="leaks into the reported accuracy"):
        parse_calib_spec(f"regdb-query:{tmp_path}")
    idx = tmp_path / "RegDB" / "idx"
    idx.mkdir(parents=True)
    (idx / "test_visible_1.txt").write_text("Visible/1/a.bmp 0\n")
    with pytest.raises(CalibrationError, match="leaks into the reported accuracy"):
        parse_calib_spec(f"regdb:{idx / 'test_visible_1.txt'}")
    # A whole SYSU-MM01 folder holds the test identities too: only sysu:ROOT (training split) is allowed.
    sysu = tmp_path / "SYSU-MM01"
    (sysu / "exp").mkdir(parents=True)
    (sysu / "exp" / "test_id.txt").write_text("1,2")
    with pytest.raises(CalibrationError, match=r"use sysu:"):
        parse_calib_spec(str(sysu))
    # A test folder inside a crops folder is refused too, not silently mixed in.
    _write_crops(tmp_path / "mixed" / "train", 2, 2)
    _write_crops(tmp_path / "mixed" / "test", 2, 2)
    with pytest.raises(CalibrationError, match="test split"):
        build_calibration_set(str(tmp_path / "mixed"), contract=SMALL)


def test_dataset_train_source_reads_only_the_training_lists(tmp_path, monkeypatch):
    """Through a stand-in reader module, so the test does not depend on a data set on disk."""
    _write_crops(tmp_path / "ds", n_visible=6, n_grey=6)
    files = sorted((tmp_path / "ds").glob("*.jpg"))
    fake = types.ModuleType("admpff.training.datasets.regdb")

    class RegDB:
        def __init__(self, root, trial=1):
            assert trial == 3
            self.train_visible = [(str(p), 0, 1) for p in files if p.name.startswith("vis")]
            self.train_infrared = [(str(p), 0, 2) for p in files if p.name.startswith("grey")]

        def test(self, *_):  # pragma: no cover - must never be called
            raise AssertionError("calibration touched the test split")

    fake.RegDB = RegDB
    monkeypatch.setitem(sys.modules, "admpff.training.datasets.regdb", fake)
    source = parse_calib_spec(f"regdb:{tmp_path / 'ds'}:3")
    assert isinstance(source, DatasetTrainSource) and source.trial == 3
    calset = build_calibration_set(source, num_samples=8, contract=SMALL)
    assert calset.counts == {"visible": 4, "infrared": 4}
    assert all(o.startswith("regdb:") for o in calset.origins)


# -- spec parsing ---------------------------------------------------------------------------------------
def test_parse_calib_spec(tmp_path):
    _write_crops(tmp_path / "crops", 1, 1)
    assert isinstance(parse_calib_spec(str(tmp_path / "crops")), FolderSource)
    forced = parse_calib_spec(f"ir:{tmp_path / 'crops'}")
    assert isinstance(forced, FolderSource) and forced.modality == INFRARED
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    assert isinstance(parse_calib_spec(str(video), every_n_frames=2), VideoSource)
    assert isinstance(parse_calib_spec("rtsp://camera.local/stream1"), VideoSource)
    assert parse_calib_spec("0").uri == 0
    sysu = parse_calib_spec(f"sysu:{tmp_path}")
    assert isinstance(sysu, DatasetTrainSource) and sysu.kind == "sysu"
    regdb = parse_calib_spec(f"regdb:{tmp_path}")
    assert regdb.kind == "regdb" and regdb.trial == 1
    for missing in (str(tmp_path / "nope"), f"sysu:{tmp_path / 'nope'}", str(tmp_path / "nope.avi")):
        with pytest.raises(CalibrationError) as info:
            parse_calib_spec(missing)
        assert "\n" not in str(info.value) and "does not exist" in str(info.value)
    (tmp_path / "one.jpg").write_bytes(b"x")
    with pytest.raises(CalibrationError, match="single image"):
        parse_calib_spec(str(tmp_path / "one.jpg"))
    with pytest.raises(CalibrationError, match="unknown calibration data scheme"):
        parse_calib_spec("market:/data/market")


# -- cache ----------------------------------------------------------------------------------------------
def test_cache_round_trip_and_input_size_check(tmp_path):
    _write_crops(tmp_path / "crops", 6, 6)
    calset = build_calibration_set(str(tmp_path / "crops"), num_samples=8, seed=3, contract=SMALL)
    path = calset.save(tmp_path / "cache" / "calib.npz")
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    loaded = CalibrationSet.load(path, contract=SMALL)
    np.testing.assert_array_equal(loaded.images, calset.images)
    np.testing.assert_array_equal(loaded.modality, calset.modality)
    assert loaded.images.dtype == np.float32 and loaded.modality.dtype == np.int32
    assert (loaded.origins, loaded.seed, loaded.num_samples, loaded.counts, loaded.fingerprint) == (
        calset.origins, 3, 8, calset.counts, calset.fingerprint)
    with pytest.raises(CalibrationError, match=r"another input size"):
        CalibrationSet.load(path, contract=DEFAULT_CONTRACT)


def test_load_or_build_reuses_a_matching_cache_only(tmp_path, monkeypatch):
    _write_crops(tmp_path / "crops", 6, 6)
    cache = tmp_path / "calib.npz"
    first = load_or_build(cache, str(tmp_path / "crops"), num_samples=8, contract=SMALL)
    import admpff.calibration.calibset as calibset_module

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache matches")

    monkeypatch.setattr(calibset_module, "build_calibration_set", no_build)
    reused = load_or_build(cache, str(tmp_path / "crops"), num_samples=8, contract=SMALL)
    assert reused.origins == first.origins
    monkeypatch.undo()
    rebuilt = load_or_build(cache, str(tmp_path / "crops"), num_samples=6, contract=SMALL)  # another request
    assert len(rebuilt) == 6 and len(CalibrationSet.load(cache, contract=SMALL)) == 6


# -- quantizer readers ----------------------------------------------------------------------------------
def test_ort_reader_batches_and_rewinds(tmp_path):
    _write_crops(tmp_path / "crops", 5, 5)
    calset = build_calibration_set(str(tmp_path / "crops"), num_samples=10, contract=SMALL)
    reader = CalibrationDataReader(calset, batch_size=4)
    import onnxruntime.quantization as ortq
    assert isinstance(reader, ortq.CalibrationDataReader) and len(reader) == 3

    def drain():
        batches = []
        while (batch := reader.get_next()) is not None:
            batches.append(batch)
        return batches

    batches = drain()
    assert [b["images"].shape[0] for b in batches] == [4, 4, 2]
    assert all(set(b) == {"images", "modality"} for b in batches)
    assert batches[0]["images"].dtype == np.float32 and batches[0]["modality"].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in batches]), calset.images)
    assert reader.get_next() is None
    reader.rewind()
    assert len(drain()) == 3
    dropping = CalibrationDataReader(calset, batch_size=4, drop_last=True)
    assert len(dropping) == 2 and len(list(dropping)) == 2

    data = to_modelopt_calibration_data(calset)
    assert set(data) == {"images", "modality"} and data["images"].shape == (10, 3, 32, 16)


def test_ort_reader_drives_quantize_static(tmp_path):
    """The reader is accepted by ORT's calibrator on a tiny two-input graph shaped like the export."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.full(108, 0.01, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Cast", ["modality"], ["mod_f"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["mod_f", "axes"], ["mod_4d"]),
         helper.make_node("Add", ["conv", "mod_4d"], ["embedding"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 32, 16]),
                 helper.make_tensor_value_info("modality", TensorProto.INT32, ["n"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 4, 32, 16])],
        [weight, helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "tiny.onnx")
    _write_crops(tmp_path / "crops", 4, 4)
    calset = build_calibration_set(str(tmp_path / "crops"), num_samples=8, contract=SMALL)
    quantize_static(str(tmp_path / "tiny.onnx"), str(tmp_path / "tiny.qdq.onnx"),
                    CalibrationDataReader(calset, batch_size=4), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=ort_calibrate_method("max"),
                    extra_options={"ActivationSymmetric": True})
    ops = {n.op_type for n in onnx.load(tmp_path / "tiny.qdq.onnx").graph.node}
    assert "QuantizeLinear" in ops


def test_calibration_method_names():
    from onnxruntime.quantization import CalibrationMethod

    assert ort_calibrate_method("entropy") == CalibrationMethod.Entropy
    assert ort_calibrate_method("Percentile") == CalibrationMethod.Percentile
    assert ort_calibrate_method("max") == ort_calibrate_method("minmax") == CalibrationMethod.MinMax
    assert modelopt_calibration_method("minmax") == "max"
    with pytest.raises(CalibrationError, match="unknown calibration method 'bogus'.*entropy, percentile, max"):
        ort_calibrate_method("bogus")
    with pytest.raises(CalibrationError, match="percentile"):
        modelopt_calibration_method("percentile")


# -- video ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(VTEST is None, reason="shared/data/vtest.avi is absent (a fresh clone has no shared/; "
                                          "apt-get install opencv-doc provides it)")
@pytest.mark.skipif(importlib.util.find_spec("admpff.runtime.detectors") is None,
                    reason="admpff.runtime.detectors (the HOG person detector) is not in this tree yet")
def test_video_source_gives_real_crops_of_the_contract_size():
    source = VideoSource(VTEST, every_n_frames=3, max_frames=30, min_box=(48, 24), progress=False)
    samples = list(source)
    assert source.frames_read == 30 and source.frames_detected == 10
    assert samples, "the default detector found no person in the first 30 frames of vtest.avi"
    for crop, modality, origin in samples:
        assert crop.ndim == 3 and crop.shape[0] >= 48 and crop.shape[1] >= 24
        assert modality == VISIBLE and origin.startswith("video:") and "#frame" in origin
    calset = build_calibration_set(source, num_samples=8, contract=DEFAULT_CONTRACT)
    assert calset.images.shape[1:] == (3, DEFAULT_CONTRACT.height, DEFAULT_CONTRACT.width)
    assert calset.counts["visible"] == len(calset) > 0
    assert calset.images.std() > 5  # real pixels, not a constant fill


def test_video_source_clips_boxes_and_skips_tiny_ones(tmp_path):
    """Clipping and the size filter, with a stand-in detector (independent of runtime.detectors)."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG AVI files")
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8))
    writer.release()

    class StandIn:
        def detect(self, frame_bgr):
            boxes = np.array([[-20, -10, 40, 100],     # clipped to (0, 0, 40, 100)
                              [150, 60, 400, 300],     # clipped to (150, 60, 160, 120): 10 px wide, too small
                              [60, 10, 64, 20]], np.float32)  # tiny
            return boxes, np.ones(3, np.float32)

    source = VideoSource(path, detector=StandIn(), every_n_frames=2, max_frames=5, min_box=(32, 16), progress=False)
    samples = list(source)
    assert source.frames_read == 5 and source.frames_detected == 3
    assert len(samples) == 3 and source.too_small == 6
    assert all(s.crop.shape[:2] == (100, 40) for s in samples)
    assert [s.origin.rsplit("#", 1)[1] for s in samples] == ["frame0000000/box000", "frame0000002/box000",
                                                             "frame0000004/box000"]


@pytest.mark.skipif(importlib.util.find_spec("admpff.training.datasets.sysu") is None,
                    reason="admpff.training.datasets.sysu is not in this tree")
def test_sysu_training_split_only_through_the_real_reader(tmp_path):
    """A tiny SYSU-MM01 in its official layout: test identities must never reach the calibration set."""
    root = tmp_path / "SYSU-MM01"
    (root / "exp").mkdir(parents=True)
    (root / "exp" / "train_id.txt").write_text("1,2")
    (root / "exp" / "val_id.txt").write_text("3")
    (root / "exp" / "test_id.txt").write_text("4")
    rng = np.random.default_rng(0)
    for cam in range(1, 7):
        for pid in (1, 2, 3, 4):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True)
            for k in range(2):
                image = _grey_crop(rng) if cam in (3, 6) else _visible_crop(rng)
                cv2.imwrite(str(folder / f"{k + 1:04d}.jpg"), image)
    calset = build_calibration_set(f"sysu:{root}", num_samples=1000, contract=SMALL)
    assert calset.counts == {"visible": 24, "infrared": 12}  # 3 train+val ids x (4 RGB | 2 IR cams) x 2 images
    assert not [o for o in calset.origins if "/0004/" in o]


def test_strided_histogram_calibration_with_a_short_last_batch(tmp_path):
    """ORT's histogram collector stacks a chunk's batches; 11 crops in batches of 4 used to end in a
    ValueError (inhomogeneous shape). The quantizer's reader tops the last batch up instead."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from admpff.export.quantize import _StridedReader, _stride

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.linspace(-1, 1, 108, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["embedding"]),
         helper.make_node("Identity", ["modality"], ["modality_out"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 32, 16]),
                 helper.make_tensor_value_info("modality", TensorProto.INT32, ["n"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 4, 32, 16]),
         helper.make_tensor_value_info("modality_out", TensorProto.INT32, ["n"])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "tiny.onnx")
    _write_crops(tmp_path / "crops", 6, 5)
    calset = build_calibration_set(str(tmp_path / "crops"), num_samples=11, contract=SMALL)
    reader = _StridedReader(calset, batch_size=4)
    assert len(reader) == 3
    sizes = [len(b["images"]) for b in iter(reader.get_next, None)]
    assert sizes == [4, 4, 4]
    reader.rewind()
    quantize_static(str(tmp_path / "tiny.onnx"), str(tmp_path / "tiny.int8.onnx"), reader,
                    quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=ort_calibrate_method("percentile"),
                    extra_options={"CalibStridedMinMax": _stride(len(reader), 4)})
    assert any(n.op_type == "QLinearConv" for n in onnx.load(tmp_path / "tiny.int8.onnx").graph.node)
