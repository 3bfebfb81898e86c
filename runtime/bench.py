"""admpff-bench: trtexec-style latency/throughput of exported models, beside PyTorch and retrieval accuracy.

    admpff-bench models/admpff.onnx models/admpff.int8.onnx models/admpff.cpu-int8.onnx --batch 1,8,32
    admpff-bench models/admpff.fp16.engine --batch 1,8 --duration 10 --out bench/jetson
    admpff-bench models/*.onnx --torch runs/sysu/last.pt --accuracy sysu:/data/SYSU-MM01 --threads 4

    admpff-bench models/admpff.onnx models/admpff.int8.onnx models/admpff.cpu-int8.onnx \\
        --backend onnxruntime,openvino --precision f32,bf16 --torch runs/sysu/last.pt --rounds 3
    admpff-bench models/admpff.int8.onnx --backend openvino --batch 8 --benchmark-app --rounds 3

Every model file runs on every ``--backend`` (auto: the one ``load_embedder`` picks; .onnx through ONNX
Runtime or OpenVINO, one OpenVINO row per ``--precision``; .engine through TensorRT) and is timed at every
batch size:
``embed_batch`` on an already preprocessed float32 batch, host to host (input copy, inference, output
copy and the final L2 renormalisation), after ``--warmup`` untimed calls, for at least ``--iters`` calls
and at least ``--duration`` seconds.  Per batch: latency min / mean / median / p90 / p95 / p99 / max in
ms per call, images/s = batch / mean latency and queries/s = 1 / mean latency (trtexec's "qps").
Preprocessing (``crops_to_batch`` on BGR crops of 100x50..200x90 px) is timed once, per crop.

``--rounds R`` times every model in turn R times and pools the calls, so a CPU shared with other work
slows every row alike.  ``--benchmark-app`` runs OpenVINO's own ``benchmark_app`` (sync API, one stream,
the same file, precision, threads and batch) right after each OpenVINO row and adds its row and an
``x b_app`` column (admpff's images/s over benchmark_app's).
``--torch CKPT`` adds a PyTorch eager FP32 row (same threads) and an ``x PyTorch`` speed-up column;
``--accuracy sysu:ROOT|regdb:ROOT[:trial]`` adds rank-1 / mAP / mINP on the data set's test protocol.
Writes DIR/bench.json (all numbers + environment) and DIR/latency_vs_batch.png.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import io
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .contract import INFRARED, VISIBLE, InputContract
from .cpu_info import cpu_model

__all__ = ["summarize_latencies", "benchmark_model", "make_inputs", "time_preprocessing", "TorchEmbedder",
           "retrieval_metrics", "backend_name", "format_table", "plot_latency", "environment", "main"]

PERCENTILES = (90, 95, 99)
PROVIDER_CHOICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "auto": None,  # the embedder's own preference: TensorRT EP > CUDA EP > CPU
}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class BenchError(RuntimeError):
    """A user-facing failure; shown as one line ``admpff-bench: error: ...`` with exit status 2."""


# -- statistics ---------------------------------------------------------------------------------
def summarize_latencies(seconds: Sequence[float], batch: int) -> dict:
    """Latencies of timed calls (seconds each, one batch per call) -> trtexec-style figures.

    Returns ``iters``, ``batch``, ``min_ms``, ``mean_ms``, ``median_ms``, ``p90_ms``, ``p95_ms``,
    ``p99_ms``, ``max_ms``, ``std_ms``, ``cv`` (std / mean, trtexec's coefficient of variance),
    ``total_s``, ``images_per_s`` (batch / mean latency) and ``queries_per_s`` (1 / mean latency).
    Percentiles interpolate linearly between the sorted samples (numpy's default).
    """
    t = np.asarray(list(seconds), np.float64)
    if t.size == 0:
        raise ValueError("summarize_latencies() needs at least one latency")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("latencies must be finite and non-negative")
    batch = int(batch)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    ms = t * 1000.0
    mean = float(ms.mean())
    out = {"iters": int(t.size), "batch": batch, "min_ms": float(ms.min()), "mean_ms": mean,
           "median_ms": float(np.median(ms)), "max_ms": float(ms.max()), "std_ms": float(ms.std()),
           "cv": float(ms.std() / mean) if mean > 0 else 0.0, "total_s": float(t.sum())}
    for p in PERCENTILES:
        out[f"p{p}_ms"] = float(np.percentile(ms, p))
    out["images_per_s"] = batch * 1000.0 / mean if mean > 0 else math.inf
    out["queries_per_s"] = 1000.0 / mean if mean > 0 else math.inf
    return out


# -- inputs -------------------------------------------------------------------------------------
def make_inputs(contract: InputContract, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic preprocessed batch (float32 NCHW with uint8 values) and alternating modalities.

    Latency does not depend on pixel values; mixing visible and infrared exercises both stems."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, 3, contract.height, contract.width), dtype=np.uint8).astype(np.float32)
    modality = np.where(np.arange(batch) % 2 == 0, VISIBLE, INFRARED).astype(np.int32)
    return images, modality


def realistic_crops(n: int = 64, seed: int = 0) -> list[np.ndarray]:
    """BGR uint8 crops of 100..200 x 50..90 pixels (height x width), as a person detector yields."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(100, 201)), int(rng.integers(50, 91)), 3), dtype=np.uint8)
            for _ in range(n)]


def time_preprocessing(contract: InputContract, n_crops: int = 64, repeats: int = 10, warmup: int = 2) -> dict:
    """Time ``crops_to_batch`` on a fixed crop set; figures per crop (ms) plus the raw per-call stats."""
    from .preprocess import crops_to_batch

    crops = realistic_crops(n_crops)
    for _ in range(warmup):
        crops_to_batch(crops, contract)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        crops_to_batch(crops, contract)
        times.append(time.perf_counter() - t0)
    per_call = summarize_latencies(times, n_crops)
    return {"crops": n_crops, "crop_sizes": "100..200 x 50..90 px (h x w), BGR uint8",
            "target": [contract.height, contract.width], "repeats": repeats,
            "ms_per_crop_median": per_call["median_ms"] / n_crops, "ms_per_crop_mean": per_call["mean_ms"] / n_crops,
            "ms_per_crop_min": per_call["min_ms"] / n_crops, "crops_per_s": per_call["images_per_s"]}


# -- backends -----------------------------------------------------------------------------------
class TorchEmbedder:
    """PyTorch eager FP32 model behind the ``embed_batch`` interface (normalisation done here)."""

    def __init__(self, model, contract: InputContract, path: str | Path, device: str = "cpu"):
        import torch

        from .contract import ModelInfo

        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.path = Path(path)
        self.info = ModelInfo(contract=contract, precision="fp32", checkpoint_sha256="", version="",
                              tensorrt_compatible=False, raw={})
        self.max_batch = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> "TorchEmbedder":
        from admpff.export.checkpoint_io import model_from_checkpoint

        model, _config, sha = model_from_checkpoint(path)
        emb = cls(model, model.contract(), path, device)
        emb.sha256 = sha
        return emb

    @property
    def contract(self) -> InputContract:
        return self.info.contract

    def embed_batch(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        from .preprocess import normalize_batch

        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(normalize_batch(images, self.contract)).to(self.device)
            m = torch.from_numpy(np.asarray(modality, np.int64)).to(self.device)
            return self.model(x, m).float().cpu().numpy()  # .cpu() waits for the GPU


def backend_name(embedder) -> str:
    if isinstance(embedder, TorchEmbedder):
        return f"pytorch-{embedder.device.type}"
    providers = getattr(embedder, "providers", None)
    if providers:
        return "ort-" + providers[0].replace("ExecutionProvider", "").lower()
    if type(embedder).__name__ == "TensorRTEmbedder":
        return "tensorrt"
    if type(embedder).__name__ == "OpenVINOEmbedder":
        return f"openvino-{embedder.inference_precision}"
    return type(embedder).__name__


# -- timing -------------------------------------------------------------------------------------
def _calls_per_batch(embedder, batch: int) -> int:
    step = getattr(embedder, "max_batch", None)
    return 1 if not step else math.ceil(batch / step)


def benchmark_model(embedder, batches: Iterable[int], warmup: int = 3, iters: int = 20, duration: float = 0.0,
                    *, seed: int = 0, progress: Callable[[dict], None] | None = None,
                    keep_times: bool = False) -> list[dict]:
    """Time ``embedder.embed_batch`` at each batch size -> one row dict per batch.

    Each row has ``model``, ``precision``, ``backend``, ``batch``, ``calls_per_batch`` (above 1 when the
    backend splits the batch: a TensorRT profile's max batch) and :func:`summarize_latencies`' figures,
    measured after ``warmup`` untimed calls over at least ``iters`` calls and ``duration`` seconds.  A
    batch below a TensorRT profile's minimum is reported with ``skipped`` (a reason) instead of figures.
    ``keep_times`` adds the raw per-call seconds as ``times_s`` (for pooling rounds).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    rows = []
    for batch in batches:
        batch = int(batch)
        row = {"model": Path(getattr(embedder, "path", "model")).name, "precision": embedder.info.precision,
               "backend": backend_name(embedder), "batch": batch}
        min_batch = getattr(embedder, "min_batch", None)
        if min_batch and batch < min_batch:
            row["skipped"] = f"batch {batch} is below the engine profile's minimum {min_batch}"
            rows.append(row)
            if progress:
                progress(row)
            continue
        images, modality = make_inputs(embedder.contract, batch, seed)
        for _ in range(max(0, int(warmup))):
            embedder.embed_batch(images, modality)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < iters or time.perf_counter() - start < duration:
            t0 = time.perf_counter()
            embedder.embed_batch(images, modality)
            times.append(time.perf_counter() - t0)
        row.update(summarize_latencies(times, batch))
        row["calls_per_batch"] = _calls_per_batch(embedder, batch)
        if keep_times:
            row["times_s"] = times
        rows.append(row)
        if progress:
            progress(row)
    return rows


# -- OpenVINO's benchmark_app, side by side ------------------------------------------------------
def benchmark_app_command(path: str | Path, batch: int, threads: int, precision: str, seconds: float,
                          contract: InputContract) -> list[str]:
    """benchmark_app configured as admpff's OpenVINO embedder runs: one synchronous infer request on one
    stream with ``threads`` threads, the same inference precision (``auto``: the plugin's default)."""
    exe = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(exe) if exe.is_file() else "benchmark_app", "-m", str(path), "-d", "CPU", "-hint", "none",
           "-nstreams", "1", "-nireq", "1", "-api", "sync", "-nthreads", str(threads),
           "-shape", f"{contract.input_names[0]}[{batch},3,{contract.height},{contract.width}],"
                     f"{contract.input_names[1]}[{batch}]",
           "-t", f"{max(1, math.ceil(seconds))}"]
    if precision != "auto":
        cmd += ["-infer_precision", precision]
    return cmd


def parse_benchmark_app(text: str, batch: int) -> dict:
    """benchmark_app's report (Count, Duration, Latency Median/Average/Min/Max, Throughput) -> a row's figures."""
    import re

    def number(label: str) -> float:
        m = re.search(rf"{label}:\s+([0-9.]+)", text)
        if not m:
            raise BenchError(f"benchmark_app printed no {label.strip()} figure")
        return float(m.group(1))

    mean = number("Average")
    out = {"iters": int(number("Count")), "batch": batch, "min_ms": number("Min"), "mean_ms": mean,
           "median_ms": number("Median"), "max_ms": number("Max"), "total_s": number("Duration") / 1000.0,
           "images_per_s": number("Throughput"), "queries_per_s": number("Throughput") / batch}
    for p in PERCENTILES:
        out[f"p{p}_ms"] = None  # benchmark_app reports one percentile (the median) unless told otherwise
    return out


def run_benchmark_app(embedder, batch: int, seconds: float) -> dict:
    """One benchmark_app run on the embedder's own file, precision and threads -> a bench row."""
    import subprocess

    cmd = benchmark_app_command(embedder.path, batch, embedder.threads, embedder.requested_precision,
                                seconds, embedder.contract)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise BenchError("--benchmark-app: OpenVINO's benchmark_app is not installed (pip install openvino)") from None
    if proc.returncode != 0:
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln] or ["(no message)"]
        raise BenchError(f"benchmark_app failed on {embedder.path.name}: {errors[0].strip()}")
    row = {"model": embedder.path.name, "precision": embedder.info.precision,
           "backend": f"benchmark_app-{embedder.inference_precision}", "batch": batch, "calls_per_batch": 1,
           "command": " ".join(cmd)}
    row.update(parse_benchmark_app(proc.stdout, batch))
    return row


# -- accuracy -----------------------------------------------------------------------------------
def _embed_all(embedder, images: np.ndarray, modality: np.ndarray, chunk: int = 32) -> np.ndarray:
    parts = [embedder.embed_batch(images[i:i + chunk], modality[i:i + chunk]) for i in range(0, len(images), chunk)]
    out = np.concatenate(parts).astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def retrieval_metrics(embedder, data, chunk: int = 32) -> dict:
    """Rank-1 / rank-5 / mAP / mINP (percent) of ``embedder`` on a ``RetrievalData`` (verify_data)."""
    from admpff.training.evaluation import compute_distmat, eval_regdb, eval_sysu

    t0 = time.perf_counter()
    q = _embed_all(embedder, data.query_images, data.query_modality, chunk)
    g = _embed_all(embedder, data.gallery_images, data.gallery_modality, chunk)
    dist = compute_distmat(q, g)
    if data.protocol == "sysu":
        cmc, mAP, mINP = eval_sysu(dist, data.query_pids, data.gallery_pids, data.query_camids, data.gallery_camids)
    else:
        cmc, mAP, mINP = eval_regdb(dist, data.query_pids, data.gallery_pids)
    return {"data": data.name, "protocol": data.protocol, "queries": int(len(q)), "gallery": int(len(g)),
            "rank1": 100.0 * float(cmc[0]), "rank5": 100.0 * float(cmc[min(4, len(cmc) - 1)]),
            "mAP": 100.0 * float(mAP), "mINP": 100.0 * float(mINP), "seconds": time.perf_counter() - t0}


def check_accuracy_spec(spec: str) -> None:
    kind, _, rest = spec.partition(":")
    if kind not in ("sysu", "regdb") or not rest:
        raise BenchError(f"--accuracy must be sysu:ROOT or regdb:ROOT[:trial], not {spec!r}")
    root = rest
    if kind == "regdb" and rest.rsplit(":", 1)[-1].isdigit() and ":" in rest:
        root = rest.rsplit(":", 1)[0]
    if not Path(root).is_dir():
        raise BenchError(f"--accuracy: data folder not found: {root}")


# -- reporting ----------------------------------------------------------------------------------
def _fmt(value, spec: str, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


def format_table(rows: Sequence[dict], accuracy: dict | None = None) -> str:
    """The printed table; ``accuracy`` maps a model name to :func:`retrieval_metrics`' dict."""
    show_acc = bool(accuracy)
    mw = max([len("model")] + [len(r["model"]) for r in rows])
    pw = max([len("precision")] + [len(r["precision"]) for r in rows])
    bw = max([len("backend")] + [len(r["backend"]) for r in rows])
    cols = [("batch", 5), ("min", 9), ("mean", 9), ("median", 9), ("p90", 9), ("p95", 9), ("p99", 9),
            ("img/s", 9), ("q/s", 9), ("x PyTorch", 10)]
    show_bapp = any("vs_benchmark_app" in r for r in rows)
    if show_bapp:
        cols += [("x b_app", 8)]
    if show_acc:
        cols += [("R1", 7), ("mAP", 7)]
    head = f"{'model':<{mw}}  {'precision':<{pw}}  {'backend':<{bw}}" + "".join(f"{n:>{w + 1}}" for n, w in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = f"{r['model']:<{mw}}  {r['precision']:<{pw}}  {r['backend']:<{bw}} {r['batch']:>5}"
        if "skipped" in r:
            cells += f"  skipped: {r['skipped']}"
        else:
            cells += "".join(" " + _fmt(r[k], ".3f", 9) for k in ("min_ms", "mean_ms", "median_ms", "p90_ms",
                                                                   "p95_ms", "p99_ms"))
            cells += " " + _fmt(r["images_per_s"], ".1f", 9) + " " + _fmt(r["queries_per_s"], ".1f", 9)
            cells += " " + _fmt(r.get("speedup_vs_pytorch"), ".2f", 10)
            if show_bapp:
                cells += " " + _fmt(r.get("vs_benchmark_app"), ".3f", 8)
            if show_acc:
                acc = (accuracy or {}).get(accuracy_key(r)) or {}
                cells += " " + _fmt(acc.get("rank1"), ".2f", 7) + " " + _fmt(acc.get("mAP"), ".2f", 7)
        lines.append(cells)
    lines.append("latency: ms per batch (one embed_batch call, host to host, after warm-up); "
                 "img/s = batch / mean; x PyTorch = img/s over PyTorch eager FP32 at the same batch"
                 + ("; x b_app = img/s over benchmark_app's on the same file, precision, threads and batch"
                    if show_bapp else ""))
    return "\n".join(lines)


def accuracy_key(row: dict) -> str:
    """Rows of one file on several backends keep their own accuracy."""
    return f"{row['model']} {row['backend']}"


def plot_latency(rows: Sequence[dict], path: str | Path, title: str = "admpff-bench") -> Path:
    """PNG: median latency per batch and throughput per batch, one line per model/precision/backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .atomic import write_bytes

    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in rows:
        if "skipped" in r:
            continue
        label = f"{r['model']} ({r['precision']}, {r['backend']})"
        series.setdefault(label, []).append((r["batch"], r["median_ms"], r["images_per_s"]))
    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_lat, ax_thr = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    batches = sorted({b for pts in series.values() for b, _, _ in pts})
    for label, pts in series.items():
        pts.sort()
        b = [p[0] for p in pts]
        ax_lat.plot(b, [p[1] for p in pts], marker="o", label=label)
        ax_thr.plot(b, [p[2] for p in pts], marker="o", label=label)
    lat = [p[1] for pts in series.values() for p in pts if p[1] > 0]
    thr = [p[2] for pts in series.values() for p in pts if p[2] > 0]
    for ax, ylabel, values in ((ax_lat, "median latency (ms per batch)", lat), (ax_thr, "throughput (images/s)", thr)):
        ax.set_xscale("log", base=2)
        if values and max(values) / min(values) > 20:  # models orders of magnitude apart: keep all visible
            ax.set_yscale("log")
        if batches:
            ax.set_xticks(batches)
            ax.set_xticklabels([str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, which="both")
    ax_lat.set_title("latency vs batch")
    ax_thr.set_title("throughput vs batch")
    if series:
        ax_thr.legend(loc="best", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes(path, buf.getvalue())


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def environment(threads: int, providers: str, torch_module=None) -> dict:
    env = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
           "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
           "cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": _usable_cpus(),
           "threads": threads, "providers_requested": providers}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers_available"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    if torch_module is not None:
        env["torch"] = torch_module.__version__
        env["torch_threads"] = torch_module.get_num_threads()
        env["torch_cuda"] = bool(torch_module.cuda.is_available())
    if "tensorrt" in sys.modules:
        env["tensorrt"] = getattr(sys.modules["tensorrt"], "__version__", None)
    if "openvino" in sys.modules:
        ov = sys.modules["openvino"]
        env["openvino"] = ov.get_version()
        env["openvino_cpu_capabilities"] = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    try:
        from .contract import package_version

        env["admpff"] = package_version()
    except Exception:  # pragma: no cover
        pass
    return env


# -- command line -------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage block
        raise BenchError(message)


def parse_batches(text: str) -> list[int]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise BenchError(f"--batch must be a comma list of positive integers (e.g. 1,8,32), not {text!r}")
        if int(part) not in out:
            out.append(int(part))
    return out


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    ap = _Parser(prog="admpff-bench", description=doc[0], epilog="\n\n".join(doc[1:]),
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="MODEL",
                    help=".onnx (ONNX Runtime / OpenVINO), OpenVINO .xml or TensorRT .engine files")
    ap.add_argument("--backend", default="auto", metavar="LIST",
                    help="comma list of backends every file runs on: auto (load_embedder's choice), onnxruntime, "
                         "openvino (default auto)")
    ap.add_argument("--precision", default="auto", metavar="LIST",
                    help="OpenVINO inference precisions, comma list of auto (bf16 where the CPU has AMX, else f32), "
                         "default (the CPU plugin's own choice), f32, bf16, f16: one OpenVINO row each (default auto)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every model in turn this many times and pool the calls (default 1)")
    ap.add_argument("--benchmark-app", action="store_true",
                    help="add OpenVINO benchmark_app's figures on the same file, precision, threads and batch "
                         "after each OpenVINO row")
    ap.add_argument("--batch", default="1,8", help="comma list of batch sizes (default 1,8)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per batch before timing (default 3)")
    ap.add_argument("--iters", type=int, default=20, help="at least this many timed calls per batch (default 20)")
    ap.add_argument("--duration", type=float, default=0.0,
                    help="and at least this many seconds of timed calls per batch (default 0)")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime / OpenVINO threads and torch.set_num_threads (default: usable CPUs)")
    ap.add_argument("--providers", default="auto", choices=sorted(PROVIDER_CHOICES),
                    help="ONNX Runtime providers for .onnx files (default auto: TensorRT EP > CUDA EP > CPU)")
    ap.add_argument("--torch", default=None, metavar="CHECKPOINT",
                    help="admpff-train checkpoint: add a PyTorch eager FP32 reference row (needs torch)")
    ap.add_argument("--accuracy", default=None, metavar="DATA",
                    help="sysu:ROOT or regdb:ROOT[:trial]: rank-1/mAP/mINP of every model on the test protocol")
    ap.add_argument("--max-queries", type=int, default=400, help="queries used by --accuracy (default 400)")
    ap.add_argument("--out", default="bench", metavar="DIR",
                    help="folder for bench.json and latency_vs_batch.png (default ./bench)")
    ap.add_argument("--name", default=None, help="label of this run (JSON 'name', plot title)")
    ap.add_argument("--quiet", action="store_true", help="no per-row progress lines on stderr")
    return ap


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def parse_choices(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    out = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part not in allowed:
            raise BenchError(f"{flag}: {part!r} is not one of {', '.join(allowed)}")
        if part not in out:
            out.append(part)
    return out


def _load_models(paths: list[str], providers: str, threads: int, backends: Sequence[str] = ("auto",),
                 precisions: Sequence[str] = ("auto",)) -> list:
    from .embedder import backends as registered_backends, choose_backend, load_embedder

    embedders = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BenchError(f"model file not found: {path}")
        if path.suffix.lower() in ENGINE_SUFFIXES:
            embedders.append(load_embedder(path))
            continue
        ort_options = {} if providers == "auto" else {"providers": PROVIDER_CHOICES[providers]}
        names = []
        for b in backends:
            name = choose_backend(path, b, ort_options if b == "auto" else None).name
            if name not in names:
                names.append(name)
        for name in names:
            refused = registered_backends()[name].refuses(path) if name == "openvino" and len(names) > 1 else None
            if refused:  # one row fewer, not a failed run: the file's other backends still run
                print(f"admpff-bench: {path.name} has no OpenVINO row: it is {refused}", file=sys.stderr)
                continue
            if name == "openvino":
                for precision in precisions:
                    embedders.append(load_embedder(path, backend="openvino", threads=threads, precision=precision))
            elif name == "onnxruntime":
                embedders.append(load_embedder(path, backend="onnxruntime", threads=threads,
                                               providers=PROVIDER_CHOICES[providers]))
            else:
                embedders.append(load_embedder(path, backend=name, threads=threads))
    return embedders


def _load_torch(checkpoint: str, providers: str, threads: int):
    if not Path(checkpoint).is_file():
        raise BenchError(f"--torch: checkpoint not found: {checkpoint}")
    try:
        import torch
    except ImportError:
        raise BenchError("--torch needs PyTorch, which is not installed here "
                         "(pip install 'admpff[train]'); drop --torch to bench without it") from None
    torch.set_num_threads(threads)
    device = "cuda" if providers != "cpu" and torch.cuda.is_available() else "cpu"
    from admpff.export.checkpoint_io import ExportError

    try:
        return torch, TorchEmbedder.from_checkpoint(checkpoint, device)
    except ExportError as exc:
        raise BenchError(str(exc)) from None


def run(args) -> tuple[dict, dict]:
    batches = parse_batches(args.batch)
    if args.iters < 1 or args.warmup < 0 or args.duration < 0 or args.max_queries < 1:
        raise BenchError("--iters and --max-queries must be >= 1, --warmup and --duration >= 0")
    threads = args.threads if args.threads else _usable_cpus()
    if threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    if args.rounds < 1:
        raise BenchError(f"--rounds must be >= 1, got {args.rounds}")
    backends = parse_choices(args.backend, ("auto", "onnxruntime", "openvino"), "--backend")
    precisions = parse_choices(args.precision, ("auto", "default", "f32", "bf16", "f16"), "--precision")
    if args.accuracy:
        check_accuracy_spec(args.accuracy)
    for p in args.models:  # fail before anything heavy runs
        if not Path(p).is_file():
            raise BenchError(f"model file not found: {p}")
    from .cli_support import CommandError, prepare_output_dir
    try:  # an --out that is a file fails now, not after the benchmark
        prepare_output_dir(args.out)
    except CommandError as exc:
        raise BenchError(str(exc)) from None

    torch_module = torch_emb = None
    if args.torch:
        torch_module, torch_emb = _load_torch(args.torch, args.providers, threads)
    t0 = time.perf_counter()
    embedders = _load_models(args.models, args.providers, threads, backends, precisions)
    models = [e for e in embedders]
    if torch_emb is not None:
        models.insert(0, torch_emb)
    names = [(Path(getattr(e, "path", "model")).name, backend_name(e)) for e in models]
    if len(set(names)) != len(names):  # same file name in two folders: keep rows apart
        for e, n in zip(models, names):
            if names.count(n) > 1:
                e._bench_name = str(e.path)  # (the backend still tells rows of one file apart)
    _say(args.quiet, f"admpff-bench: {len(models)} model(s) loaded in {time.perf_counter() - t0:.1f} s; "
                     f"batches {','.join(map(str, batches))}, warm-up {args.warmup}, >= {args.iters} iters"
                     + (f" and >= {args.duration:g} s" if args.duration else "") + f", {threads} threads")

    preprocess = time_preprocessing(models[0].contract)
    _say(args.quiet, f"preprocess (crops_to_batch, {preprocess['crops']} crops -> "
                     f"{preprocess['target'][0]}x{preprocess['target'][1]}): "
                     f"{preprocess['ms_per_crop_median']:.3f} ms per crop")

    total = len(models) * len(batches) * args.rounds
    done = [0]

    def progress(row):
        done[0] += 1
        if "skipped" in row:
            _say(args.quiet, f"[{done[0]}/{total}] {row['model']} batch {row['batch']}: skipped ({row['skipped']})")
        else:
            _say(args.quiet, f"[{done[0]}/{total}] {row['model']} {row['precision']} {row['backend']} batch "
                             f"{row['batch']}: median {row['median_ms']:.3f} ms, {row['images_per_s']:.1f} img/s "
                             f"({row['iters']} iters)")

    # Rounds: every model in turn, then again; calls are pooled per model and batch, so load from other
    # processes on a shared CPU falls on every row alike instead of on whichever ran during it.
    pooled: list[list[dict]] = [[] for _ in models]
    bapp: dict[tuple[int, int], list[dict]] = {}
    for round_no in range(args.rounds):
        for i, emb in enumerate(models):
            these = benchmark_model(emb, batches, args.warmup, args.iters, args.duration, progress=progress,
                                    keep_times=True, seed=round_no)
            pooled[i].append(these)
            if args.benchmark_app and type(emb).__name__ == "OpenVINOEmbedder":
                for row in these:
                    if "skipped" in row:
                        continue
                    b_row = run_benchmark_app(emb, row["batch"], max(args.duration, row["total_s"], 2.0))
                    bapp.setdefault((i, row["batch"]), []).append(b_row)
                    _say(args.quiet, f"    benchmark_app {b_row['model']} {b_row['backend']} batch {row['batch']}: "
                                     f"median {b_row['median_ms']:.3f} ms, {b_row['images_per_s']:.1f} img/s")
    rows: list[dict] = []
    model_info = []
    for i, emb in enumerate(models):
        name = getattr(emb, "_bench_name", None)
        these = []
        for j, first in enumerate(pooled[i][0]):
            row = dict(first)
            if "skipped" not in row:
                times = [t for per_round in pooled[i] for t in per_round[j]["times_s"]]
                row.update(summarize_latencies(times, row["batch"]))
                row["rounds"] = args.rounds
                row.pop("times_s", None)
            these.append(row)
            runs = bapp.get((i, row["batch"]))
            if runs:
                b_row = dict(runs[0])
                for key in ("images_per_s", "queries_per_s", "median_ms", "mean_ms"):
                    b_row[key] = float(np.median([r[key] for r in runs]))
                b_row["min_ms"] = min(r["min_ms"] for r in runs)
                b_row["max_ms"] = max(r["max_ms"] for r in runs)
                b_row["iters"] = sum(r["iters"] for r in runs)
                b_row["rounds"] = len(runs)
                row["vs_benchmark_app"] = row["images_per_s"] / b_row["images_per_s"]
                these.append(b_row)
        if name:
            for r in these:
                r["model"] = name
        rows.extend(these)
        c = emb.contract
        model_info.append({"model": name or emb.path.name, "path": str(emb.path), "precision": emb.info.precision,
                           "backend": backend_name(emb), "providers": getattr(emb, "providers", None),
                           "describe": emb.describe() if hasattr(emb, "describe") and not isinstance(emb, TorchEmbedder)
                           else backend_name(emb),
                           "checkpoint_sha256": getattr(emb, "sha256", None) or emb.info.checkpoint_sha256,
                           "input": [3, c.height, c.width], "embedding_dim": c.embedding_dim,
                           "max_batch": getattr(emb, "max_batch", None)})

    # x PyTorch: throughput over the PyTorch row's at the same batch
    if torch_emb is not None:
        ref = {r["batch"]: r["images_per_s"] for r in rows if r["backend"].startswith("pytorch") and "skipped" not in r}
        for r in rows:
            if "skipped" not in r and r["batch"] in ref:
                r["speedup_vs_pytorch"] = r["images_per_s"] / ref[r["batch"]]

    accuracy: dict[str, dict] = {}
    if args.accuracy:
        accuracy = _accuracy(args, models, model_info)

    result = {"name": args.name or (Path(args.models[0]).stem if args.models else "admpff-bench"),
              "settings": {"batches": batches, "warmup": args.warmup, "iters": args.iters,
                           "duration_s": args.duration, "threads": threads, "providers": args.providers,
                           "backends": backends, "openvino_precisions": precisions, "rounds": args.rounds,
                           "timing": "embed_batch on a preprocessed float32 batch, host to host, per call",
                           "percentiles": "linear interpolation (numpy)", "accuracy": args.accuracy,
                           "max_queries": args.max_queries if args.accuracy else None},
              "environment": environment(threads, args.providers, torch_module),
              "preprocess": preprocess, "models": model_info, "rows": rows}
    for e in embedders:
        close = getattr(e, "close", None)
        if callable(close):
            close()
    return result, accuracy


def _accuracy(args, models, model_info) -> dict:
    from admpff.export.checkpoint_io import ExportError
    from admpff.export.verify_data import load_retrieval_data

    cache: dict[tuple, object] = {}
    accuracy = {}
    for emb, info in zip(models, model_info):
        c = emb.contract  # only what preprocessing reads decides whether the crops can be shared
        key = (c.height, c.width, c.channel_order, c.resize_interpolation)
        if key not in cache:
            t0 = time.perf_counter()
            try:
                cache[key] = load_retrieval_data(args.accuracy, emb.contract, args.max_queries)
            except (ExportError, ValueError, OSError) as exc:  # DatasetError is a ValueError
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BenchError(f"--accuracy {args.accuracy}: {msg.replace('--verify-data', '--accuracy')}") from None
            d = cache[key]
            _say(args.quiet, f"accuracy data {args.accuracy}: {len(d.query_pids)} queries, {len(d.gallery_pids)} "
                             f"gallery ({time.perf_counter() - t0:.1f} s)")
        try:
            acc = retrieval_metrics(emb, cache[key])
        except ValueError as exc:
            raise BenchError(f"--accuracy {args.accuracy}: {exc}") from None
        info["accuracy"] = acc
        accuracy[accuracy_key(info)] = acc
        _say(args.quiet, f"accuracy {info['model']}: R1 {acc['rank1']:.2f}  mAP {acc['mAP']:.2f}  "
                         f"mINP {acc['mINP']:.2f}")
    return accuracy


def main(argv: Sequence[str] | None = None) -> int:
    from .embedder import ModelLoadError
    from .atomic import write_json

    try:
        args = build_parser().parse_args(argv)
        result, accuracy = run(args)
        for r in result["rows"]:
            acc = accuracy.get(accuracy_key(r))
            if acc:
                r["rank1"], r["mAP"], r["mINP"] = acc["rank1"], acc["mAP"], acc["mINP"]
        print(format_table(result["rows"], accuracy))
        out = Path(args.out)
        json_path = write_json(out / "bench.json", result)
        png_path = plot_latency(result["rows"], out / "latency_vs_batch.png", title=result["name"])
        print(f"wrote {json_path} and {png_path}")
        return 0
    except (BenchError, ModelLoadError) as exc:
        print(f"admpff-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("admpff-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
