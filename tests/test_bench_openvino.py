"""admpff-bench with several backends in one run: ONNX Runtime and OpenVINO rows (per precision), rounds
pooled, and OpenVINO's own benchmark_app side by side on the same file (a real run, tiny model)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _tiny_model import build_tiny_embedder
from admpff.runtime import bench
from admpff.runtime.embedder import backends

pytestmark = pytest.mark.skipif(not backends()["openvino"].installed(), reason="openvino is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_embedder(tmp_path_factory.mktemp("bench_ov") / "tiny.onnx")


def _cpu_has(capability: str) -> bool:
    import openvino as ov

    return capability in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def test_one_file_on_both_backends_and_two_precisions(tiny):
    precisions = ["f32"] + (["bf16"] if _cpu_has("BF16") else [])
    embedders = bench._load_models([str(tiny)], "cpu", 1, ["onnxruntime", "openvino"], precisions)
    assert [bench.backend_name(e) for e in embedders] == ["ort-cpu"] + [f"openvino-{p}" for p in precisions]
    assert all(getattr(e, "threads", 1) == 1 for e in embedders)
    # "auto" next to an explicit name does not load the same backend twice (auto is OpenVINO on x86 without a
    # GPU provider); an explicit --providers is an ONNX Runtime option, so auto then means ONNX Runtime
    if bench.backend_name(bench._load_models([str(tiny)], "auto", 1)[0]).startswith("openvino"):
        again = bench._load_models([str(tiny)], "auto", 1, ["auto", "openvino"], ["f32"])
        assert len(again) == 1 and bench.backend_name(again[0]) == "openvino-f32"
    assert bench.backend_name(bench._load_models([str(tiny)], "cpu", 1)[0]) == "ort-cpu"


def test_rounds_pool_the_calls_and_benchmark_app_runs_beside(tiny, tmp_path):
    out = tmp_path / "b"
    p = subprocess.run([sys.executable, "-m", "admpff.runtime.bench", str(tiny), "--backend", "onnxruntime,openvino",
                        "--precision", "f32", "--batch", "2", "--iters", "3", "--warmup", "1", "--rounds", "2",
                        "--threads", "1", "--benchmark-app", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    result = json.loads((out / "bench.json").read_text())
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == {"ort-cpu", "openvino-f32", "benchmark_app-f32"}
    assert rows["ort-cpu"]["iters"] == 6 and rows["ort-cpu"]["rounds"] == 2  # 3 calls x 2 rounds, pooled
    b_app = rows["benchmark_app-f32"]
    assert b_app["images_per_s"] > 0 and b_app["rounds"] == 2
    for flag in ("-nthreads 1", "-infer_precision f32", "-api sync", "-nstreams 1", "images[2,3,288,144],modality[2]"):
        assert flag in b_app["command"]
    ratio = rows["openvino-f32"]["vs_benchmark_app"]
    assert ratio == pytest.approx(rows["openvino-f32"]["images_per_s"] / b_app["images_per_s"])
    assert "x b_app" in p.stdout
    assert result["environment"]["openvino"] and result["settings"]["backends"] == ["onnxruntime", "openvino"]


def test_parse_benchmark_app_report():
    text = """[ INFO ] Count:            265 iterations
[ INFO ] Duration:         2051.51 ms
[ INFO ] Latency:
[ INFO ]    Median:        3.83 ms
[ INFO ]    Average:       7.60 ms
[ INFO ]    Min:           0.36 ms
[ INFO ]    Max:           62.91 ms
[ INFO ] Throughput:   1033.39 FPS"""
    row = bench.parse_benchmark_app(text, 8)
    assert row["iters"] == 265 and row["median_ms"] == 3.83 and row["images_per_s"] == 1033.39
    assert row["queries_per_s"] == pytest.approx(1033.39 / 8) and row["total_s"] == pytest.approx(2.05151)
    with pytest.raises(bench.BenchError, match="no Throughput"):
        bench.parse_benchmark_app(text.replace("Throughput", "Speed"), 8)


@pytest.mark.parametrize("flag, value, message", [
    ("--precision", "int4", "--precision: 'int4' is not one of auto, default, f32, bf16, f16"),
    ("--backend", "tflite", "--backend: 'tflite' is not one of auto, onnxruntime, openvino"),
    ("--rounds", "0", "--rounds must be >= 1, got 0"),
])
def test_bad_choices_are_one_line_errors(tiny, tmp_path, capsys, flag, value, message):
    assert bench.main([str(tiny), flag, value, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"admpff-bench: error: {message}"


def test_precision_the_cpu_lacks_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    from admpff.runtime import openvino_backend

    # Stands in for a CPU without bf16 (the AMD kind): what OpenVINO would report there.
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core, device="CPU": ["FP32", "INT8"])
    assert bench.main([str(tiny), "--backend", "openvino", "--precision", "bf16", "--out", str(tmp_path),
                       "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("admpff-bench: error: this CPU cannot run bf16") and err.count("\n") == 1


def test_cpu_int8_file_gets_no_openvino_row_but_the_run_goes_on(tmp_path):
    cpu_int8 = build_tiny_embedder(tmp_path / "m.cpu-int8.onnx", precision="int8-cpu")
    plain = build_tiny_embedder(tmp_path / "m.onnx")
    embedders = bench._load_models([str(plain), str(cpu_int8)], "auto", 1, ["onnxruntime", "openvino"], ["f32"])
    assert [(e.path.name, bench.backend_name(e)) for e in embedders] == [
        ("m.onnx", "ort-cpu"), ("m.onnx", "openvino-f32"), ("m.cpu-int8.onnx", "ort-cpu")]
