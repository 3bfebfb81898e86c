"""INT8 caches are keyed on what produced them; the export's edges: --out, -q, counts, permissions, stem."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from admpff.calibration import build_calibration_set, load_or_build
from admpff.export.onnx_export import export_fp32
from admpff.export.quantize import quantize_tensorrt_qdq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_export import ckpt, tiny_model  # noqa: E402


def write_crops(folder: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        blocks = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"c{i:03d}.png"), cv2.resize(blocks, (48, 96), interpolation=cv2.INTER_NEAREST))
    return folder


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    model = tiny_model()
    return export_fp32(model, model.contract(), d / "m.onnx", checkpoint_sha256="feedbeef"), model.contract()


def _scales(path: Path) -> dict:
    m = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer if i.name.endswith("_scale")}


def test_ranges_cache_is_recomputed_when_anything_that_produced_it_changes(fp32, tmp_path):
    fp32_path, contract = fp32
    cal_a = build_calibration_set(write_crops(tmp_path / "a", 8, seed=1), 8, contract=contract)
    cal_b = build_calibration_set(write_crops(tmp_path / "b", 8, seed=2), 8, contract=contract)
    lines: list[str] = []
    cache = tmp_path / "m.int8.ranges.json"

    def q(calset, method, out="m.int8.onnx", ranges=cache):
        return quantize_tensorrt_qdq(fp32_path, tmp_path / out, calset, method=method, ranges_cache=ranges,
                                     note=lines.append, quiet=True).path

    q(cal_a, "percentile")
    assert lines == [] and json.loads(cache.read_text())["key"]["method"] == "percentile"
    q(cal_a, "percentile")
    assert lines[-1].startswith("reusing INT8 ranges m.int8.ranges.json")
    # ONNX Runtime alone dies here ("Calibration cache ... was produced with ...; Delete the cache").
    q(cal_a, "entropy")
    assert lines[-1] == ("recomputing INT8 ranges m.int8.ranges.json: "
                         "calibration method (--calib-method) percentile -> entropy")
    # Other calibration crops, same folder: the result equals a fresh folder's, not the stale ranges.
    stale_reuse_would_give = _scales(tmp_path / "m.int8.onnx")
    again = q(cal_b, "entropy")
    assert lines[-1].startswith("recomputing INT8 ranges m.int8.ranges.json: calibration crops ")
    fresh = q(cal_b, "entropy", out="fresh.int8.onnx", ranges=tmp_path / "fresh" / "r.json")
    got, want = _scales(again), _scales(fresh)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
    assert any(not np.array_equal(got[k], stale_reuse_would_give[k]) for k in got)
    # A cache with no key (ORT's own file, or an older admpff) is never trusted.
    cache.write_text(json.dumps({"method": "entropy"}))
    q(cal_b, "entropy")
    assert "made by an older admpff" in lines[-1] and lines[-1].startswith("recomputing")


def test_calibration_cache_says_why_it_is_rebuilt(tmp_path):
    from admpff.runtime.contract import InputContract

    small = InputContract(height=32, width=16)
    crops = write_crops(tmp_path / "crops", 6, seed=3)
    lines: list[str] = []
    cache = tmp_path / "c.npz"
    load_or_build(cache, [str(crops)], num_samples=4, seed=0, contract=small, note=lines.append)
    load_or_build(cache, [str(crops)], num_samples=4, seed=0, contract=small, note=lines.append)
    assert lines[-1].startswith("reusing calibration cache")
    load_or_build(cache, [str(crops)], num_samples=4, seed=5, contract=small, note=lines.append)
    assert lines[-1] == f"rebuilding calibration cache {cache}: seed (--calib-seed) 0 -> 5"
    write_crops(crops, 7, seed=4)  # one more file, the others rewritten
    load_or_build(cache, [str(crops)], num_samples=4, seed=5, contract=small, note=lines.append)
    assert lines[-1].endswith("calibration data (--calib-data) changed")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cli(*args, umask=None):
    return subprocess.run([sys.executable, "-m", "admpff.export.cli", *map(str, args)], capture_output=True,
                          text=True, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


@pytest.mark.slow
def test_export_quiet_same_permissions_default_stem_and_one_set_of_counts(tmp_path):
    checkpoint = ckpt(tmp_path)
    crops = write_crops(tmp_path / "crops", 12, seed=5)
    out = tmp_path / "models"
    common = [checkpoint, "--out", out, "--int8", "--calib-data", crops, "--verify-samples", "4", "--auto-float", "0"]
    p = _cli(*common, "--calib-samples", "8", "--no-verify", "-q", umask=0o027)
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    for chatter in ("Collecting tensor data", "Finding optimal threshold", "Number of tensors"):
        assert chatter not in text
    names = sorted(f.name for f in out.iterdir())
    assert names == ["admpff.calib.npz", "admpff.int8.fp16.onnx", "admpff.int8.onnx", "admpff.int8.ranges.json",
                     "admpff.onnx"]  # the README's stem
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()}
    assert set(modes.values()) == {0o640}, modes

    p = _cli(*common, "--calib-samples", "50", "--calib-method", "max")
    assert p.returncode == 0, p.stderr
    assert (out / "admpff.verify.json").stat().st_mode & 0o777 == 0o644 & ~current_umask()
    text = p.stdout + p.stderr
    assert "12 crops: 8 to calibrate on (8 visible, 0 infrared), 4 held back to verify" in text
    assert ("WARNING: --calib-data holds 12 usable crops, so INT8 calibrates on 8 instead of --calib-samples 50"
            in text)
    assert "INT8 Q/DQ for TensorRT (ort, max, 8 crops)" in text
    # 54 = 50 + 4 appears only where it is spelled out as that sum (the calibration cache's rebuild line).
    assert "asked for 54" not in text
    assert all("54" not in line or "(--calib-samples + --verify-samples) 8 -> 54" in line for line in text.splitlines())
    assert "recomputing INT8 ranges admpff.int8.ranges.json:" in text
    assert "calibration method (--calib-method) percentile -> max" in text


def test_out_that_is_a_file_fails_before_any_work(tmp_path):
    taken = tmp_path / "models"
    taken.write_text("not a folder")
    p = _cli(tmp_path / "missing.pt", "--out", taken, "--int8", "--calib-data", tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "--out" in p.stderr and "existing file" in p.stderr and "Traceback" not in p.stderr
    assert taken.read_text() == "not a folder"
    p = _cli(tmp_path / "missing.pt", "--out", tmp_path / "o", "--calib-samples", "0")
    assert p.returncode == 2 and "--calib-samples must be >= 1" in p.stderr
    p = _cli(tmp_path / "missing.pt", "--out", tmp_path / "o", "--quantizer", "modelopt")  # percentile by default
    assert p.returncode == 2 and p.stderr.startswith("admpff-export: error: --calib-method percentile:"), p.stderr


def test_export_help_shows_every_default():
    p = _cli("--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    for shown in ("(default: admpff)", "seed of the crop selection (default: 0)", "(default: auto)",
                  "(default: 1,8,32)", "(default 17", "(default: 2.0)"):
        assert shown in text, shown


def test_fp16_float_qdq_file_keeps_every_quantized_conv(fp32, tmp_path):
    """<name>.int8.fp16.onnx: what strongly typed TensorRT builds; same Q/DQ, FP16 in between (opset 19)."""
    from admpff.export.qdq_check import qdq_summary
    from admpff.export.qdq_fp16 import convert_qdq_fp16
    from admpff.runtime.embedder import load_embedder

    fp32_path, contract = fp32
    calset = build_calibration_set(write_crops(tmp_path / "a", 12, seed=7), 12, contract=contract)
    int8 = quantize_tensorrt_qdq(fp32_path, tmp_path / "m.int8.onnx", calset, quiet=True).path
    typed = convert_qdq_fp16(int8, tmp_path / "m.int8.fp16.onnx")
    before, after = qdq_summary(int8), qdq_summary(typed, max_opset=19)
    assert after.ok, after.violations[:3]
    assert (after.quantized_convs, after.qdq_nodes) == (before.quantized_convs, before.qdq_nodes) and after.opset == 19
    model = onnx.load(str(typed))
    scale_types = {i.data_type for i in model.graph.initializer if i.name.endswith("_scale")}
    assert scale_types == {onnx.TensorProto.FLOAT16}  # each DequantizeLinear emits FP16 into its Conv
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert set(inputs.values()) == {onnx.TensorProto.FLOAT, onnx.TensorProto.INT32}  # FP32 I/O kept
    x, mod = calset.images, calset.modality
    ref = load_embedder(fp32_path).embed_batch(x, mod)
    cos = np.sum(ref * load_embedder(typed).embed_batch(x, mod), axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97  # the INT8 bars of verify.THRESHOLDS
    assert load_embedder(typed).info.raw["admpff.float_dtype"] == "fp16"
