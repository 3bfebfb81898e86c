"""admpff-bench: latency statistics, timing rows, CLI outputs, PyTorch reference, accuracy, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from admpff.runtime.bench import (benchmark_model, main, make_inputs, summarize_latencies,
                                  time_preprocessing)
from admpff.runtime.contract import CONTRACT_KEY, DEFAULT_CONTRACT, InputContract, ModelInfo
from admpff.runtime.embedder import load_embedder

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_model import build_tiny_embedder  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW_FIELDS = {"model", "precision", "backend", "batch", "iters", "calls_per_batch", "min_ms", "mean_ms",
              "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "std_ms", "cv", "total_s", "images_per_s",
              "queries_per_s"}
SMALL = InputContract(height=96, width=48)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return (build_tiny_embedder(d / "tiny.onnx", contract=SMALL),
            build_tiny_embedder(d / "tiny.fp16.onnx", contract=SMALL, precision="fp16", seed=1))


def _one_line_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("admpff-bench: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- statistics ---------------------------------------------------------------------------------
def test_summarize_latencies_known_values():
    s = summarize_latencies([i / 1000.0 for i in range(10, 0, -1)], batch=4)  # 1..10 ms, unsorted
    assert s["iters"] == 10 and s["batch"] == 4
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(10.0)
    assert s["mean_ms"] == pytest.approx(5.5) and s["median_ms"] == pytest.approx(5.5)
    # linear interpolation between sorted samples: position p/100 * (n - 1)
    assert s["p90_ms"] == pytest.approx(9.1) and s["p95_ms"] == pytest.approx(9.55)
    assert s["p99_ms"] == pytest.approx(9.91)
    assert s["images_per_s"] == pytest.approx(4 / 0.0055)
    assert s["queries_per_s"] == pytest.approx(1 / 0.0055)
    assert s["total_s"] == pytest.approx(0.055)
    assert s["std_ms"] == pytest.approx(np.std(np.arange(1, 11)))
    assert s["cv"] == pytest.approx(s["std_ms"] / 5.5)


def test_summarize_latencies_single_and_invalid():
    s = summarize_latencies([0.002], batch=8)
    assert s["min_ms"] == s["p99_ms"] == s["median_ms"] == pytest.approx(2.0)
    assert s["images_per_s"] == pytest.approx(4000.0)
    for bad, batch in (([], 1), ([-0.1], 1), ([float("nan")], 1), ([0.1], 0)):
        with pytest.raises(ValueError):
            summarize_latencies(bad, batch)


def test_make_inputs_deterministic():
    a, ma = make_inputs(SMALL, 3)
    b, mb = make_inputs(SMALL, 3)
    assert a.shape == (3, 3, 96, 48) and a.dtype == np.float32
    assert np.array_equal(a, b) and np.array_equal(a, np.round(a)) and a.min() >= 0 and a.max() <= 255
    assert ma.dtype == np.int32 and list(ma) == [0, 1, 0] and np.array_equal(ma, mb)


def test_time_preprocessing_reports_per_crop():
    p = time_preprocessing(SMALL, n_crops=8, repeats=3)
    assert p["crops"] == 8 and p["target"] == [96, 48]
    assert 0 < p["ms_per_crop_min"] <= p["ms_per_crop_median"] and p["crops_per_s"] > 0


# -- timing rows --------------------------------------------------------------------------------
def test_benchmark_model_rows(tiny_models):
    emb = load_embedder(tiny_models[0], intra_op_threads=1)
    seen = []
    rows = benchmark_model(emb, [1, 3], warmup=1, iters=4, duration=0.0, progress=seen.append)
    assert [r["batch"] for r in rows] == [1, 3] and seen == rows
    for r in rows:
        assert ROW_FIELDS <= set(r)
        assert r["model"] == "tiny.onnx" and r["precision"] == "fp32" and r["backend"] == "ort-cpu"
        assert r["iters"] == 4 and r["calls_per_batch"] == 1
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])


def test_benchmark_model_duration_and_fake_backend():
    """--duration keeps timing past --iters; a TensorRT-like profile splits or skips batches."""
    class Fake:
        path = Path("fake.engine")
        info = ModelInfo(contract=SMALL, precision="int8-qdq", checkpoint_sha256="", version="",
                         tensorrt_compatible=True, raw={})
        contract = SMALL
        min_batch, max_batch = 2, 4

        def __init__(self):
            self.calls = 0

        def embed_batch(self, images, modality):
            self.calls += 1
            return np.zeros((len(images), 4), np.float32)

    fake = Fake()
    rows = benchmark_model(fake, [1, 8], warmup=2, iters=1, duration=0.05)
    assert "skipped" in rows[0] and "min_ms" not in rows[0]
    assert rows[1]["calls_per_batch"] == 2 and rows[1]["iters"] > 1
    assert fake.calls == 2 + rows[1]["iters"]
    assert rows[1]["precision"] == "int8-qdq" and rows[1]["backend"] == "Fake"


# -- command line -------------------------------------------------------------------------------
def test_cli_two_models_writes_json_and_png(tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([str(tiny_models[0]), str(tiny_models[1]), "--batch", "1,2", "--warmup", "1", "--iters", "3",
               "--threads", "1", "--providers", "cpu", "--out", str(out), "--name", "tiny run"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = captured.out
    for col in ("model", "precision", "backend", "batch", "min", "mean", "median", "p90", "p95", "p99",
                "img/s", "x PyTorch"):
        assert col in table
    assert "tiny.onnx" in table and "tiny.fp16.onnx" in table
    assert "[4/4]" in captured.err  # per-row progress

    data = json.loads((out / "bench.json").read_text())
    assert data["name"] == "tiny run"
    assert data["settings"]["batches"] == [1, 2] and data["settings"]["threads"] == 1
    env = data["environment"]
    for key in ("cpu_model", "cores", "onnxruntime", "onnxruntime_providers_available", "date", "threads"):
        assert env[key] not in (None, ""), key
    assert "torch" not in env
    assert data["preprocess"]["ms_per_crop_median"] > 0
    assert [m["precision"] for m in data["models"]] == ["fp32", "fp16"]
    rows = data["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [("tiny.onnx", 1), ("tiny.onnx", 2),
                                                         ("tiny.fp16.onnx", 1), ("tiny.fp16.onnx", 2)]
    for r in rows:
        assert ROW_FIELDS <= set(r) and r["iters"] == 3 and "speedup_vs_pytorch" not in r

    png = (out / "latency_vs_batch.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    import cv2

    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100


def test_runtime_bench_works_without_torch(tiny_models, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any "import torch" now fails
        from admpff.runtime.bench import main
        rc = main([{str(tiny_models[0])!r}, "--batch", "1", "--iters", "2", "--quiet", "--out", {str(tmp_path)!r}])
        assert rc == 0, rc
        rc = main([{str(tiny_models[0])!r}, "--torch", {str(tiny_models[0])!r}, "--out", {str(tmp_path)!r}])
        assert rc == 2, rc
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "admpff-bench: error: --torch needs PyTorch" in res.stderr
    assert "Traceback" not in res.stderr


# -- PyTorch reference and accuracy -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_admpff(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from admpff.export.onnx_export import export_fp32
    from admpff.training.datasets.synthetic import write_sysu
    from admpff.training.model import ADMPFFNet, ModelConfig

    d = tmp_path_factory.mktemp("admpff")
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=4, backbone="resnet18", height=96, width=48, dim=16, en_rows=1)
    model = ADMPFFNet(cfg).eval()
    ckpt = d / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": {"model": cfg.to_dict()}}, ckpt)
    onnx_path = export_fp32(model, model.contract(), d / "admpff-tiny.onnx", checkpoint_sha256="x",
                            do_simplify=False)  # the same network; onnxslim only costs test time here
    write_sysu(d / "sysu", num_ids=9, images_per_cam=2, image_size=(96, 48))
    return ckpt, onnx_path, d / "sysu"


def test_torch_reference_row_speedup_and_accuracy(tiny_admpff, tmp_path, capsys):
    ckpt, onnx_path, sysu = tiny_admpff
    out = tmp_path / "out"
    rc = main([str(onnx_path), "--torch", str(ckpt), "--accuracy", f"sysu:{sysu}", "--batch", "1,2",
               "--warmup", "1", "--iters", "2", "--providers", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "R1" in captured.out and "mAP" in captured.out and "pytorch-cpu" in captured.out
    data = json.loads((out / "bench.json").read_text())
    assert "torch" in data["environment"] and data["environment"]["torch_threads"] >= 1
    rows = {(r["backend"], r["batch"]): r for r in data["rows"]}
    assert set(rows) == {("pytorch-cpu", 1), ("pytorch-cpu", 2), ("ort-cpu", 1), ("ort-cpu", 2)}
    for b in (1, 2):
        pt, ort_row = rows[("pytorch-cpu", b)], rows[("ort-cpu", b)]
        assert pt["speedup_vs_pytorch"] == pytest.approx(1.0)
        assert ort_row["speedup_vs_pytorch"] == pytest.approx(ort_row["images_per_s"] / pt["images_per_s"])
    accs = {m["backend"]: m["accuracy"] for m in data["models"]}
    for acc in accs.values():
        assert acc["protocol"] == "sysu" and acc["queries"] > 0 and acc["gallery"] > 0
        for key in ("rank1", "mAP", "mINP"):
            assert 0.0 <= acc[key] <= 100.0
    # the ONNX file is the checkpoint's network: identical retrieval figures
    assert accs["ort-cpu"]["rank1"] == pytest.approx(accs["pytorch-cpu"]["rank1"])
    assert accs["ort-cpu"]["mAP"] == pytest.approx(accs["pytorch-cpu"]["mAP"], abs=1e-3)
    assert all(0.0 <= r["rank1"] <= 100.0 for r in data["rows"])


def test_torch_embedder_matches_onnx(tiny_admpff):
    from admpff.runtime.bench import TorchEmbedder

    ckpt, onnx_path, _ = tiny_admpff
    pt = TorchEmbedder.from_checkpoint(ckpt)
    ort = load_embedder(onnx_path, providers=["CPUExecutionProvider"])
    images, modality = make_inputs(pt.contract, 3)
    a, b = pt.embed_batch(images, modality), ort.embed_batch(images, modality)
    assert np.abs(a - b).max() < 1e-4


# -- one-line errors ----------------------------------------------------------------------------
def _wrong_shape_model(path: Path) -> Path:
    """Graph takes 96x48 images but its metadata contract says 288x144."""
    build_tiny_embedder(path, contract=SMALL)
    m = onnx.load(str(path))
    for prop in m.metadata_props:
        if prop.key == CONTRACT_KEY:
            prop.value = DEFAULT_CONTRACT.to_json()
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("case", ["missing", "corrupt", "wrong-shape", "suffix", "no-metadata"])
def test_bad_models_one_line(case, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    if case == "corrupt":
        path.write_bytes(b"this is not an onnx model" * 10)
    elif case == "wrong-shape":
        _wrong_shape_model(path)
    elif case == "suffix":
        path = tmp_path / "m.txt"
        path.write_text("x")
    elif case == "no-metadata":
        build_tiny_embedder(path, contract=SMALL)
        m = onnx.load(str(path))
        del m.metadata_props[:]
        onnx.save(m, str(path))
    line = _one_line_error(capsys, [str(path), "--out", str(tmp_path / "out")])
    assert "m." in line
    assert not (tmp_path / "out" / "bench.json").exists()


@pytest.mark.parametrize("batch", ["0", "a", "1,,2", "", "-1", "2.5"])
def test_bad_batch_one_line(batch, tiny_models, tmp_path, capsys):
    line = _one_line_error(capsys, [str(tiny_models[0]), "--batch", batch, "--out", str(tmp_path)])
    assert "--batch" in line


@pytest.mark.parametrize("spec", ["foo:x", "sysu:", "sysu", "regdb:/no/such/dir:1", "sysu:{tmp}"])
def test_bad_accuracy_one_line(spec, tiny_models, tmp_path, capsys):
    spec = spec.format(tmp=tmp_path)  # an existing folder that is not a SYSU-MM01 layout
    line = _one_line_error(capsys, [str(tiny_models[0]), "--accuracy", spec, "--batch", "1", "--iters", "1",
                                    "--quiet", "--out", str(tmp_path / "out")])
    assert "--accuracy" in line


def test_other_bad_arguments_one_line(tiny_models, tmp_path, capsys):
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"garbage")
    for argv in ([], [str(tiny_models[0]), "--iters", "0"], [str(tiny_models[0]), "--providers", "gpu"],
                 [str(tiny_models[0]), "--torch", str(tmp_path / "none.pt")]):
        _one_line_error(capsys, argv + ["--out", str(tmp_path / "out")] if argv else argv)
    pytest.importorskip("torch")
    line = _one_line_error(capsys, [str(tiny_models[0]), "--torch", str(bad_ckpt), "--out", str(tmp_path)])
    assert "corrupt" in line or "not" in line
