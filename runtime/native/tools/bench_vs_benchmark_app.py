"""admpff-native bench against OpenVINO's benchmark_app, side by side, on the same files, threads and batch.

    .venv/bin/python runtime/native/tools/bench_vs_benchmark_app.py FP32.onnx INT8.onnx \
        [--batch 8] [--threads 2] [--rounds 3] [--iters 20] [--json bench-native.json]
    .venv/bin/python runtime/native/tools/bench_vs_benchmark_app.py --make-models DIR   # then bench DIR's files

Three settings: the FP32 file at inference precision f32, the FP32 file at bf16, and the INT8 Q/DQ file at
the CPU's default precision.  Both tools run one synchronous request in one stream on the same threads
(benchmark_app ``-hint none -nstreams 1 -nthreads T -api sync -nireq 1``, as its UI takes -nthreads only
without a hint; admpff-native's OpenVINO backend: the latency hint, i.e. one stream, and T threads), with the
dynamic-batch model fed batch-sized inputs (benchmark_app ``-data_shape``).  Runs are interleaved (each
round runs every setting with both tools, alternating which goes first), so a CPU shared with other work
slows both alike; the ratio uses the median over rounds of each tool's median latency.
``--make-models DIR`` exports an untrained default ADMPFF-Net (ResNet-50, 288x144: speed does not depend on
the weights) to FP32 ONNX and quantizes it to INT8 Q/DQ with calibration crops from ../shared/data/vtest.avi.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from admpff.runtime.cpu_info import cpu_model

ROOT = Path(__file__).resolve().parents[3]
NATIVE = Path(os.environ.get("ADMPFF_NATIVE_BUILD", ROOT / "build" / "native")) / "admpff-native"
SETTINGS = [("fp32", "f32"), ("fp32", "bf16"), ("int8-qdq", "auto")]


def make_models(folder: Path) -> tuple[Path, Path]:
    """FP32 + INT8 Q/DQ ONNX of the default ADMPFF-Net (random weights), through the project's exporter."""
    import torch

    from admpff.calibration import VideoSource
    from admpff.calibration.calibset import build_calibration_set
    from admpff.export.onnx_export import export_fp32
    from admpff.export.quantize import quantize_tensorrt_qdq
    from admpff.training.model import ADMPFFNet, ModelConfig

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = ADMPFFNet(ModelConfig(num_classes=16)).eval()  # pretrained=None: no download
    contract = model.contract()
    fp32 = export_fp32(model, contract, folder / "bench.onnx", checkpoint_sha256="bench")
    video = ROOT.parent / "shared" / "data" / "vtest.avi"
    if not video.is_file():
        sys.exit("bench_vs_benchmark_app: --make-models needs ../shared/data/vtest.avi for calibration crops")
    source = VideoSource(video, every_n_frames=5, max_frames=100, progress=False)
    calset = build_calibration_set(source, num_samples=32, contract=contract, warn_short=False)
    int8 = quantize_tensorrt_qdq(fp32, folder / "bench.int8.onnx", calset).path
    return fp32, int8


def model_shape(path: Path) -> tuple[int, int]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    contract = json.loads(meta["admpff.contract"])
    return int(contract["height"]), int(contract["width"])


def run_native(model: Path, precision: str, batch: int, threads: int, warmup: int, iters: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "b.json"
        cmd = [str(NATIVE), "bench", "--model", str(model), "--batch", str(batch), "--threads", str(threads),
               "--warmup", str(warmup), "--iters", str(iters), "--inference-precision", precision, "--json", str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"bench_vs_benchmark_app: admpff-native failed: {p.stderr.strip()}")
        row = json.loads(out.read_text())["results"][0]
    return {"median_ms": row["median_ms"], "mean_ms": row["mean_ms"], "p90_ms": row["p90_ms"],
            "p99_ms": row["p99_ms"], "iters": row["iters"], "command": " ".join(cmd[:-2])}


def run_benchmark_app(tool: str, model: Path, precision: str, batch: int, threads: int, iters: int,
                      hw: tuple[int, int]) -> dict:
    h, w = hw
    # benchmark_app takes -nthreads only with -hint none; one stream is what the latency hint would choose.
    cmd = [tool, "-m", str(model), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-api", "sync", "-nireq", "1",
           "-nthreads", str(threads), "-niter", str(iters), "-data_shape", f"images[{batch},3,{h},{w}],modality[{batch}]"]
    if precision != "auto":
        cmd += ["-infer_precision", precision]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        sys.exit(f"bench_vs_benchmark_app: benchmark_app failed: {' | '.join(tail)}")
    figures = {}
    for key, pattern in (("median_ms", r"Median:\s*([\d.]+)\s*ms"), ("mean_ms", r"Average:\s*([\d.]+)\s*ms"),
                         ("fps", r"Throughput:\s*([\d.]+)\s*FPS")):
        m = re.search(pattern, p.stdout)
        if not m:
            sys.exit(f"bench_vs_benchmark_app: no {key} in benchmark_app's output")
        figures[key] = float(m.group(1))
    figures["command"] = " ".join(cmd)
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="FP32.onnx INT8-QDQ.onnx")
    ap.add_argument("--make-models", type=Path, metavar="DIR", help="export the files to bench into DIR first")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every setting with both tools")
    ap.add_argument("--iters", type=int, default=20, help="timed inferences per run")
    ap.add_argument("--warmup", type=int, default=3, help="admpff-native's untimed runs (benchmark_app warms up once)")
    ap.add_argument("--settings", default=",".join(f"{f}/{p}" for f, p in SETTINGS),
                    help="FILE/PRECISION pairs to run, FILE being fp32 or int8-qdq")
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "native" / "bench_vs_benchmark_app.json")
    a = ap.parse_args(argv)
    if a.make_models:
        fp32, int8 = make_models(a.make_models)
    elif len(a.models) == 2:
        fp32, int8 = a.models
    else:
        ap.error("give FP32.onnx INT8.onnx, or --make-models DIR")
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(tool).is_file():
        ap.error("benchmark_app not found (pip install openvino)")
    if not NATIVE.is_file():
        ap.error(f"{NATIVE} not found: run `make native`")
    files = {"fp32": fp32, "int8-qdq": int8}
    settings = [tuple(item.split("/", 1)) for item in a.settings.split(",") if item]
    if not settings or any(len(s) != 2 or s[0] not in files or s[1] not in ("f32", "bf16", "f16", "auto")
                           for s in settings):
        ap.error(f"--settings: expected FILE/PRECISION pairs such as fp32/f32,int8-qdq/auto, got {a.settings!r}")
    hw = model_shape(fp32)
    runs = {s: {"native": [], "benchmark_app": []} for s in settings}
    jobs = [(r, s) for r in range(a.rounds) for s in settings]
    for r, setting in tqdm(jobs, desc="bench", unit="setting"):
        file_kind, precision = setting
        order = ["native", "benchmark_app"] if r % 2 == 0 else ["benchmark_app", "native"]
        for who in order:
            if who == "native":
                runs[setting][who].append(run_native(files[file_kind], precision, a.batch, a.threads, a.warmup,
                                                     a.iters))
            else:
                runs[setting][who].append(run_benchmark_app(tool, files[file_kind], precision, a.batch, a.threads,
                                                            a.iters, hw))
    rows = []
    for setting in settings:
        nat = statistics.median(x["median_ms"] for x in runs[setting]["native"])
        ref = statistics.median(x["median_ms"] for x in runs[setting]["benchmark_app"])
        rows.append({"file": setting[0], "precision": setting[1], "batch": a.batch, "threads": a.threads,
                     "native_median_ms": nat, "benchmark_app_median_ms": ref,
                     "native_img_s": a.batch * 1000 / nat, "benchmark_app_img_s": a.batch * 1000 / ref,
                     "ratio": ref / nat, "runs": runs[setting]})
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores (shared with other work: compare ratios, not absolutes)")
    print(f"files: {fp32} / {int8}; batch {a.batch}, {a.threads} threads, {a.rounds} interleaved rounds of "
          f"{a.iters} iterations")
    head = f"{'file':<9} {'precision':<9} {'native ms':>10} {'bench_app ms':>12} {'native img/s':>13} " \
           f"{'bench_app img/s':>16} {'native/bench_app':>17}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['file']:<9} {r['precision']:<9} {r['native_median_ms']:>10.1f} {r['benchmark_app_median_ms']:>12.1f} "
              f"{r['native_img_s']:>13.2f} {r['benchmark_app_img_s']:>16.2f} {r['ratio']:>17.3f}")
    print("ms: median latency per batch (median over rounds); img/s = batch / median; "
          "native/bench_app = throughput ratio (1.0 = equal, goal >= 0.95)")
    doc = {"cpu": cpu_model(), "cores": os.cpu_count(), "batch": a.batch, "threads": a.threads, "rounds": a.rounds,
           "iters": a.iters, "files": {k: str(v) for k, v in files.items()}, "results": rows,
           "note": "CPU shared with other jobs during the run; runs interleaved"}
    from admpff.runtime.atomic import write_json

    write_json(a.json, doc)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
