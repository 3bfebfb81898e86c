"""The native runtime (admpff-native, built by CMake) against the Python runtime, on real crops.

* preprocessing: the native tensor equals ``crops_to_batch`` bit for bit (``embed --dump-input``);
* FP32 ONNX through native OpenVINO (f32) vs the Python runtime's ONNX Runtime: max abs <= 1e-4 and
  cosine >= 0.99999 per crop; INT8 Q/DQ through native OpenVINO vs FP32: mean cosine >= 0.99;
* ``match`` reads a gallery written by ``Gallery.save`` and agrees with ``Matcher``;
* the engine sidecar rule has the Python wording (through the test probe, with given device facts);
* bad input: one line on stderr, a non-zero exit, no crash.

The binaries come from ``make native`` (``build/native``; ``ADMPFF_NATIVE_BUILD`` overrides the folder).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from admpff.runtime.contract import DEFAULT_CONTRACT
from admpff.runtime.embedder import load_embedder
from admpff.runtime.engine_sidecar import EngineMismatchError, EngineSidecar, check_compatible, write_sidecar
from admpff.runtime.gallery import Gallery
from admpff.runtime.matching import Matcher
from admpff.runtime.preprocess import crops_to_batch

from _tiny_model import build_tiny_embedder, build_tiny_yolo

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("ADMPFF_NATIVE_BUILD", ROOT / "build" / "native"))
NATIVE = BUILD / "admpff-native"
PROBE = BUILD / "tests" / "admpff-native-probe"
VTEST = next((p for p in (ROOT.parent / "shared" / "data" / "vtest.avi", Path("/work/shared/data/vtest.avi"))
              if p.is_file()), None)


def _has_openvino_backend() -> bool:
    cache = BUILD / "CMakeCache.txt"
    return cache.is_file() and "ADMPFF_WITH_OPENVINO:BOOL=ON" in cache.read_text()


pytestmark = [
    pytest.mark.skipif(not NATIVE.is_file(), reason=f"native build absent ({NATIVE}): run `make native`"),
]
needs_openvino = pytest.mark.skipif(not _has_openvino_backend(),
                                    reason="native build without the OpenVINO backend (pip install openvino, "
                                           "then `make native`)")
needs_video = pytest.mark.skipif(VTEST is None, reason="shared/data/vtest.avi is absent (a fresh clone has no "
                                                       "shared/; apt-get install opencv-doc provides it)")


def run_native(*args, check=True, timeout=120):
    p = subprocess.run([str(NATIVE), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"admpff-native {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}")
    return p


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- fixtures: real crops and exported models ---------------------------------------------------------
@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """People cut from the first frames of the clip by the runtime's HOG detector, saved losslessly."""
    if VTEST is None:
        pytest.skip("shared/data/vtest.avi is absent")
    from admpff.calibration import VideoSource

    source = VideoSource(VTEST, every_n_frames=3, max_frames=60, min_box=(48, 24), progress=False)
    samples = [s[0] for s in source][:16]
    assert len(samples) >= 8, "HOG found too few people in the first 60 frames of vtest.avi"
    folder = tmp_path_factory.mktemp("crops")
    paths = []
    for i, crop in enumerate(samples):
        path = folder / f"crop{i:02d}.png"
        assert cv2.imwrite(str(path), crop)
        paths.append(path)
    assert len({cv2.imread(str(p)).shape for p in paths}) > 1  # several sizes: resizing is exercised
    return paths, source


@pytest.fixture(scope="module")
def models(tmp_path_factory, crops):
    """The tiny ADMPFF-Net of the export tests, exported to FP32 ONNX and quantized to INT8 Q/DQ with
    calibration crops from the same clip (the project's own exporter and quantizer)."""
    from admpff.calibration.calibset import build_calibration_set
    from admpff.export.onnx_export import export_fp32
    from admpff.export.quantize import quantize_tensorrt_qdq

    from test_export import tiny_model

    folder = tmp_path_factory.mktemp("native-models")
    model = tiny_model()
    contract = model.contract()
    fp32 = export_fp32(model, contract, folder / "m.onnx", checkpoint_sha256="native-parity")
    calset = build_calibration_set(crops[1], num_samples=32, contract=contract, warn_short=False)
    int8 = quantize_tensorrt_qdq(fp32, folder / "m.int8.onnx", calset).path
    return fp32, int8


def read_images(paths):
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


# -- parity -------------------------------------------------------------------------------------------
@needs_openvino
@needs_video
def test_preprocessed_tensors_equal_python(crops, models, tmp_path):
    paths, _ = crops
    tiny_default = build_tiny_embedder(tmp_path / "tiny288.onnx")  # the default 288x144 contract
    for model in (models[0], tiny_default):
        python = crops_to_batch(read_images(paths), load_embedder(model, backend="onnxruntime").contract)
        run_native("embed", "--model", model, "--modality", "visible", "--out", tmp_path / "e.npy",
                   "--dump-input", tmp_path / "x.npy", *paths)
        native = np.load(tmp_path / "x.npy")
        assert native.dtype == np.float32 and native.shape == python.shape
        assert np.array_equal(native, python), f"max difference {np.abs(native - python).max()}"
    assert python.shape[2:] == (DEFAULT_CONTRACT.height, DEFAULT_CONTRACT.width)


@needs_openvino
@needs_video
@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_fp32_native_openvino_matches_python_onnxruntime(crops, models, tmp_path, modality):
    paths, _ = crops
    reference = load_embedder(models[0], backend="onnxruntime").embed(read_images(paths), modality)
    out = tmp_path / "native.npy"
    run_native("embed", "--model", models[0], "--modality", modality, "--out", out,
               "--inference-precision", "f32", "--threads", "2", *paths)
    native = np.load(out)
    assert native.dtype == np.float32 and native.shape == reference.shape
    assert np.abs(native - reference).max() <= 1e-4
    assert cosine_rows(native, reference).min() >= 0.99999


@needs_openvino
@needs_video
def test_int8_qdq_native_openvino_close_to_fp32(crops, models, tmp_path):
    paths, _ = crops
    run_native("embed", "--model", models[0], "--modality", "visible", "--out", tmp_path / "fp32.npy",
               "--inference-precision", "f32", *paths)
    run_native("embed", "--model", models[1], "--modality", "visible", "--out", tmp_path / "int8.npy", *paths)
    cos = cosine_rows(np.load(tmp_path / "int8.npy"), np.load(tmp_path / "fp32.npy"))
    assert cos.mean() >= 0.99, f"INT8 Q/DQ vs FP32: mean cosine {cos.mean():.5f}, min {cos.min():.5f}"


@needs_openvino
@needs_video
def test_match_reads_the_python_gallery_and_agrees_with_matcher(crops, models, tmp_path):
    paths, _ = crops
    images = read_images(paths)
    python = load_embedder(models[0], backend="onnxruntime")
    gallery = Gallery.for_embedder(python)
    for person, rows in (("ann", [0, 1]), ("ben", [2, 3]), ("cid", [4])):
        gallery.add(person, python.embed([images[i] for i in rows], "visible"), "visible")
    gallery.save(tmp_path / "g.npz")
    queries = paths[:3] + paths[5:8]
    expected = Matcher(Gallery.load_for(tmp_path / "g.npz", python), threshold=0.9).match(
        python.embed(read_images(queries), "visible"), top_k=2)
    p = run_native("match", "--model", models[0], "--gallery", tmp_path / "g.npz", "--threshold", "0.9",
                   "--top-k", "2", "--inference-precision", "f32", *queries)
    lines = p.stdout.strip().splitlines()
    assert len(lines) == len(queries)
    for line, query, want in zip(lines, queries, expected):
        image, person, score, candidates = line.split("\t")
        assert image == str(query) and person == want.person
        assert abs(float(score) - want.score) <= 1e-3
        assert [c.split("=")[0] for c in candidates.split(",")] == [name for name, _ in want.candidates]
    assert lines[0].split("\t")[1] == "ann"  # an enrolled crop finds its own person


@needs_openvino
def test_openvino_ir_xml_carries_the_contract_and_embeds_like_the_onnx(tmp_path):
    import openvino as ov

    model = build_tiny_embedder(tmp_path / "tiny.onnx", checkpoint_sha256="ir")
    ov.save_model(ov.Core().read_model(str(model)), str(tmp_path / "tiny.xml"), compress_to_fp16=False)
    image = tmp_path / "p.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (120, 50, 3), dtype=np.uint8))
    for name in ("tiny.onnx", "tiny.xml"):
        run_native("embed", "--model", tmp_path / name, "--modality", "infrared", "--inference-precision", "f32",
                   "--out", tmp_path / f"{name}.npy", image)
    np.testing.assert_allclose(np.load(tmp_path / "tiny.xml.npy"), np.load(tmp_path / "tiny.onnx.npy"), atol=1e-6)


@needs_openvino
def test_bench_writes_trtexec_style_figures(tmp_path):
    model = build_tiny_embedder(tmp_path / "tiny.onnx")
    p = run_native("bench", "--model", model, "--batch", "1,3", "--warmup", "1", "--iters", "3",
                   "--threads", "1", "--json", tmp_path / "b.json")
    assert "img/s" in p.stdout
    doc = json.loads((tmp_path / "b.json").read_text())
    assert [r["batch"] for r in doc["results"]] == [1, 3]
    for r in doc["results"]:
        assert r["iters"] == 3 and 0 < r["min_ms"] <= r["median_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])


# -- the engine sidecar rule, worded as the Python runtime words it ------------------------------------
@pytest.mark.skipif(not PROBE.is_file(), reason=f"test probe absent ({PROBE}): run `make native`")
@pytest.mark.parametrize("device", [("10.3.0.30", "Orin", "8.7"), ("10.3.0", "orin", "8.7"),
                                    ("10.4.1", "Orin", "8.7"), ("10.3.0", "NVIDIA H200", "9.0"),
                                    ("8.5.2", "Jetson AGX Orin", "8.7")])
def test_engine_sidecar_refusal_has_the_python_wording(tmp_path, device):
    engine = tmp_path / "my engine.engine"
    engine.write_bytes(b"plan")
    tiny = build_tiny_embedder(tmp_path / "t.onnx")
    meta = load_embedder(tiny, backend="onnxruntime").info.raw
    sidecar = EngineSidecar(tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7",
                            precision="fp16", onnx_precision="fp32", batch=(1, 8, 32), onnx_sha256="ab" * 32,
                            metadata=dict(meta), onnx_path="models/m.onnx", requested_precision="fp16",
                            workspace_gb=2.0)
    write_sidecar(engine, sidecar)
    p = subprocess.run([str(PROBE), "check-sidecar", str(engine), *device], capture_output=True, text=True, timeout=30)
    try:
        check_compatible(sidecar, *device, engine_path=engine)
        expected = "ok"
    except EngineMismatchError as exc:
        expected = str(exc)
    assert p.stdout.strip() == expected
    assert p.returncode == (0 if expected == "ok" else 1)


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    model = build_tiny_embedder(d / "tiny.onnx", checkpoint_sha256="model-a")
    other = Gallery(embedding_dim=DEFAULT_CONTRACT.embedding_dim, model_hash="model-b", precision="fp32")
    other.add("zed", np.ones((1, DEFAULT_CONTRACT.embedding_dim), np.float32))
    other.save(d / "other.npz")
    (d / "corrupt.npz").write_bytes((d / "other.npz").read_bytes()[:300])
    image = d / "person.png"
    cv2.imwrite(str(image), np.full((64, 32, 3), 120, np.uint8))
    (d / "garbage.onnx").write_bytes(b"\x00garbage, not a protobuf" * 10)
    build_tiny_yolo(d / "foreign.onnx", np.zeros((1, 6, 4), np.float32))  # a real ONNX without the admpff contract
    build_tiny_embedder(d / "m.cpu-int8.onnx", precision="int8-cpu")  # marked as ORT's QOperator file
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("not an image")
    (d / "nosidecar.engine").write_bytes(b"plan")
    (d / "mismatch.engine").write_bytes(b"plan")
    meta = load_embedder(model, backend="onnxruntime").info.raw
    write_sidecar(d / "mismatch.engine", EngineSidecar(
        tensorrt_version="1.0.0", gpu_name="Nonexistent GPU", compute_capability="1.0", precision="fp32",
        onnx_precision="fp32", batch=(1, 1, 1), onnx_sha256="0" * 64, metadata=dict(meta)))
    return d, model, image


BAD_CASES = {
    "missing model": (["embed", "--model", "{d}/absent.onnx", "--modality", "visible", "--out", "{d}/e.npy", "{img}"],
                      "model file not found"),
    "garbage model": (["embed", "--model", "{d}/garbage.onnx", "--modality", "visible", "--out", "{d}/e.npy", "{img}"],
                      "cannot load garbage.onnx"),
    "model without contract": (["embed", "--model", "{d}/foreign.onnx", "--modality", "visible", "--out",
                                "{d}/e.npy", "{img}"], "carries no admpff contract"),
    # OpenVINO's ONNX reader crashes on ONNX Runtime's QOperator CPU-INT8 files: refused from the metadata.
    "ONNX Runtime CPU-INT8 file": (["embed", "--model", "{d}/m.cpu-int8.onnx", "--modality", "visible", "--out",
                                    "{d}/e.npy", "{img}"], "QOperator CPU-INT8 file"),
    "unsupported suffix": (["embed", "--model", "{d}/person.png", "--modality", "visible", "--out", "{d}/e.npy",
                            "{img}"], "unsupported model file"),
    "engine without sidecar": (["embed", "--model", "{d}/nosidecar.engine", "--modality", "visible", "--out",
                                "{d}/e.npy", "{img}"], "has no sidecar nosidecar.engine.json"),
    # Without TensorRT in this build the engine cannot be opened at all; with it, the sidecar is refused.
    "engine with mismatched sidecar": (["embed", "--model", "{d}/mismatch.engine", "--modality", "visible", "--out",
                                        "{d}/e.npy", "{img}"], "mismatch.engine"),
    "missing image": (["embed", "--model", "{model}", "--modality", "visible", "--out", "{d}/e.npy",
                       "{d}/absent.png"], "cannot read image"),
    "empty image": (["embed", "--model", "{model}", "--modality", "visible", "--out", "{d}/e.npy", "{d}/empty.png"],
                    "cannot read image"),
    "unreadable image": (["embed", "--model", "{model}", "--modality", "visible", "--out", "{d}/e.npy",
                          "{d}/text.jpg"], "cannot read image"),
    "unknown modality": (["embed", "--model", "{model}", "--modality", "sonar", "--out", "{d}/e.npy", "{img}"],
                         "unknown modality 'sonar'"),
    "output folder missing": (["embed", "--model", "{model}", "--modality", "visible", "--out", "{d}/no/e.npy",
                               "{img}"], "does not exist"),
    "gallery of another model": (["match", "--model", "{model}", "--gallery", "{d}/other.npz", "{img}"],
                                 "was built with another model"),
    "corrupt gallery": (["match", "--model", "{model}", "--gallery", "{d}/corrupt.npz", "{img}"],
                        "corrupt or truncated"),
    "missing gallery": (["match", "--model", "{model}", "--gallery", "{d}/absent.npz", "{img}"],
                        "gallery file not found"),
    "bad precision": (["bench", "--model", "{model}", "--inference-precision", "f8"], "inference precision"),
    "bad threads": (["bench", "--model", "{model}", "--threads", "two"], "--threads"),
    "unknown flag": (["embed", "--bogus"], "unrecognized argument --bogus"),
    "unknown command": (["frobnicate"], "unknown command"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_and_a_nonzero_exit(bad_inputs, case):
    d, model, image = bad_inputs
    args, expected = BAD_CASES[case]
    if any(k in " ".join(args) for k in ("{model}", "foreign", "cpu-int8")) and not _has_openvino_backend():
        pytest.skip("needs the OpenVINO backend to open the model")
    argv = [a.format(d=d, model=model, img=image) for a in args]
    p = run_native(*argv, check=False)
    assert p.returncode > 0, f"exit {p.returncode} (a negative status is a crash by signal)"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("admpff-native") and expected in lines[0], lines[0]
    assert not (d / "e.npy").exists()
