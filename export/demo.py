"""The README demo: every stage of admpff on an embedded default, from a fresh clone, on 2 CPU cores.

    python -m admpff.export.demo [--out demo-out] [--video VIDEO] [--quick]

No data set, GPU or weights are needed: it generates a cross-modal data set in the SYSU-MM01 layout,
trains ADMPFF-Net (the paper's ResNet-50 model, from scratch) for a few steps, evaluates it with the
SYSU protocol, fine-tunes it for INT8 (QAT), exports FP32 / FP16 / INT8 Q/DQ ONNX (and ONNX Runtime's
CPU-INT8 file where OpenVINO is not installed), verifies them, benchmarks every precision
against PyTorch, and runs admpff-reid on a real video (../shared/data/vtest.avi when present, else the
one given, else a clip it renders).  Each stage is the same command a user would type; the demo ends
with one summary table and the paths of the pictures it made.

The few training steps here show the pipeline, not accuracy: a model trained for minutes from random
weights matches people little better than chance.  The learning itself is shown by the tests
(tests/test_training.py) and by real training runs (README).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "data" / "vtest.avi"


def cpu_model() -> tuple[str, str, bool]:
    """The INT8 file admpff-reid runs on this CPU, its label, and whether the export must write it with
    --cpu-int8.  Measured (README, "Measured", "Which INT8 file on a CPU"): OpenVINO on the TensorRT-ready
    Q/DQ file is 2x ONNX Runtime's CPU-INT8 file on Intel with AMX (110 against 55 img/s at batch 8) and on
    Intel without AMX 1.2x at batch 1 and even at batch 8, so it is the CPU file wherever OpenVINO is
    installed; ONNX Runtime's CPU-INT8 file is made and used only where it is not."""
    from admpff.runtime.embedder import backends

    if backends()["openvino"].installed():
        return "admpff.int8.onnx", "INT8 Q/DQ (OpenVINO)", False
    return "admpff.cpu-int8.onnx", "CPU-INT8 (ONNX Runtime)", True


class Demo:
    def __init__(self, out: Path):
        self.out = out
        self.rows: list[tuple[str, str, float]] = []

    def step(self, title: str, cmd: list[str]) -> None:
        print(f"\n=== {title}\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"demo: '{title}' failed (exit {proc.returncode}); stopping", file=sys.stderr)
            sys.exit(proc.returncode)
        self.rows.append((title, "", seconds))

    def note(self, result: str) -> None:
        title, _, seconds = self.rows[-1]
        self.rows[-1] = (title, result, seconds)


def _tool(name: str) -> list[str]:
    """Run each stage through its console script's module with this interpreter."""
    modules = {"make-data": "admpff.training.datasets.synthetic", "train": "admpff.training.cli_train",
               "eval": "admpff.training.cli_eval", "export": "admpff.export.cli", "bench": "admpff.runtime.bench",
               "reid": "admpff.runtime.reid"}
    return [sys.executable, "-m", modules[name]]


def _annotated_frame(video: Path, png: Path) -> Path | None:
    """Save the frame with the most drawn boxes' worth of change from the annotated video as a PNG."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if n <= 0:
        return None
    cap.set(cv2.CAP_PROP_POS_FRAMES, min(n - 1, max(0, n * 2 // 3)))
    ok, frame = cap.read()
    cap.release()
    if not ok:
        return None
    cv2.imwrite(str(png), frame)
    return png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo-out")
    ap.add_argument("--video", default=None, help="video for admpff-reid (default ../shared/data/vtest.avi)")
    ap.add_argument("--quick", action="store_true", help="a smaller model and shorter runs (about 3 minutes)")
    ap.add_argument("--frames", type=int, default=None, help="frames of the video to process (default: all)")
    ap.add_argument("--no-qat", action="store_true",
                    help="skip quantization-aware fine-tuning: the INT8 files come from post-training calibration")
    ap.add_argument("--detect-every", type=int, default=1, metavar="N",
                    help="admpff-reid runs its detector (SSDLite where installed, else HOG) on every Nth frame "
                         "and the tracker carries boxes between (default 1: every frame)")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out)
    t_start = time.perf_counter()
    data = out / "data" / "sysu"
    model_args = (["--backbone", "resnet18", "--size", "192x96"] if a.quick else [])

    # 1. data
    if not (data / "exp" / "train_id.txt").is_file():
        demo.step("generate a cross-modal data set (SYSU-MM01 layout)",
                  _tool("make-data") + ["sysu", str(data), "--ids", "60", "--per-cam", "3", "--seed", "0"])
        demo.note("60 identities, 6 cameras")
    # 2. train
    train = out / "train"
    demo.step("train ADMPFF-Net briefly (MGJ loss, HcTri sampler)",
              _tool("train") + ["--dataset", "sysu", "--data", str(data), "--pretrained", "none", "--epochs", "2",
                                "--max-steps-per-epoch", "3" if not a.quick else "6", "--batch-p", "4", "--batch-k", "2",
                                "--lr", "0.01", "--backbone-lr-mult", "1", "--triplet-norm-feat",
                                "--out", str(train), "--no-tensorboard", "--overwrite",
                                "--eval-every", "0", "--workers", "0"] + model_args)
    ckpt = train / "last.pt"
    # 3. evaluate
    evaluation = out / "eval"
    demo.step("evaluate with the SYSU-MM01 protocol (all-search, 2 trials)",
              _tool("eval") + [str(ckpt), "--dataset", "sysu", "--data", str(data), "--trials", "2",
                               "--out", str(evaluation)])
    ev = _read_json(evaluation / "results.json") or _read_json(next(iter(sorted(evaluation.glob("*.json"))), None))
    if ev:
        demo.note(_eval_note(ev))
    # 3b. quantization-aware fine-tuning: post-training INT8 of this model misses its bar (issue 14)
    torch_ckpt = ckpt
    if not a.no_qat:
        qat = out / "qat"
        demo.step("quantization-aware fine-tuning for INT8 (TensorRT's Q/DQ scheme, learned scales)",
                  _tool("train") + ["--qat-from", str(ckpt), "--data", str(data), "--out", str(qat), "--epochs", "1",
                                    "--max-steps-per-epoch", "8", "--qat-calib-samples", "64", "--qat-scale-lr", "1e-2",
                                    "--qat-bias-lr", "0",
                                    "--batch-p", "2", "--batch-k", "2",
                                    "--no-tensorboard", "--overwrite", "--workers", "0"])
        ckpt = qat / "last.pt"
    # 4. export
    video = Path(a.video) if a.video else DEFAULT_CLIP
    if not video.is_file():
        video = out / "demo-clip.avi"
        if not video.is_file():
            from admpff.training.datasets.synthetic import render_video
            render_video(video, seconds=20, fps=10, seed=0, night_after=12)
    models = out / "models"
    CPU_MODEL, CPU_MODEL_LABEL, needs_cpu_int8 = cpu_model()
    demo.step("export FP32 / FP16 / INT8 Q/DQ" + (" / CPU-INT8" if needs_cpu_int8 else "") + " ONNX and verify",
              _tool("export") + [str(ckpt), "--out", str(models), "--name", "admpff", "--fp16", "--int8"]
              + (["--cpu-int8"] if needs_cpu_int8 else []) + [
                                 "--calib-data", f"sysu:{data}", "--calib-data", str(video),
                                 "--calib-samples", "48", "--verify-samples", "32",
                                 "--verify-data", f"sysu:{data}", "--verify-max-queries", "60", "-q"])
    verify = _read_json(models / "admpff.verify.json")
    if verify:
        demo.note(", ".join(f"{r['precision']} cos {r['cos_min']:.4f}" for r in verify["results"][1:]))
    # 5. benchmark
    bench = out / "bench"
    onnx_files = [str(models / f) for f in ("admpff.onnx", "admpff.fp16.onnx", "admpff.int8.onnx", "admpff.cpu-int8.onnx")
                  if (models / f).is_file()]
    from admpff.runtime.embedder import backends

    cpu_backends = "onnxruntime,openvino" if backends()["openvino"].installed() else "onnxruntime"
    demo.step(f"benchmark every precision on {cpu_backends.replace(',', ' and ')} against PyTorch eager",
              _tool("bench") + onnx_files + ["--torch", str(torch_ckpt), "--batch", "1,8", "--warmup", "1", "--iters", "4",
                                             "--backend", cpu_backends, "--out", str(bench), "--quiet"])
    b = _read_json(bench / "bench.json")
    if b:
        demo.note(_bench_note(b))
    # 6. run
    reid = out / "reid"
    frames = a.frames or (150 if a.quick else None)
    from admpff.runtime.detectors import default_detector

    detector = default_detector()
    demo.step(f"admpff-reid on {video.name} with the {CPU_MODEL_LABEL} model",
              _tool("reid") + ["--model", str(models / CPU_MODEL), "--source", f"lobby={video}",
                               "--out", str(reid), "--detect-every", str(a.detect_every), "--quiet"]
              + (["--max-frames", str(frames)] if frames else []))
    s = _read_json(reid / "summary.json")
    if s:
        every = "every frame" if a.detect_every == 1 else f"every {a.detect_every}"
        demo.note(f"{s['frames']} frames at {s['fps_end_to_end']} frames/s ({detector} on {every}), "
                  f"{s['embeddings']} embeddings, "
                  f"{len(s['identities'])} identities, peak {s['peak_rss_mb']} MB")
    snapshot = _annotated_frame(reid / "lobby.avi", reid / "annotated-frame.png")

    print(f"\n{'stage':<62}{'seconds':>8}  result")
    for title, result, seconds in demo.rows:
        print(f"{title:<62}{seconds:>8.1f}  {result}")
    print(f"{'total':<62}{time.perf_counter() - t_start:>8.1f}")
    pictures = [p for p in [*(evaluation.glob("*.png")), bench / "latency_vs_batch.png", snapshot,
                            reid / "lobby.avi"] if p and Path(p).is_file()]
    print("\npictures:\n" + "\n".join(f"  {p}" for p in pictures))
    return 0


def _read_json(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


def _eval_note(ev: dict) -> str:
    m = ev.get("mean", ev.get("summary", ev))
    if isinstance(m, dict) and "rank1" in m:
        return f"rank-1 {m['rank1']:.1f}, mAP {m['mAP']:.1f}, mINP {m.get('mINP', float('nan')):.1f} (after minutes of training)"
    return "see eval/"


def _bench_note(b: dict) -> str:
    rows = [r for r in b.get("rows", []) if r.get("batch") == 8]
    parts = []
    for r in rows:
        ratio = r.get("speedup_vs_pytorch")
        parts.append(f"{r['precision']}/{r['backend']} {r['images_per_s']:.1f} img/s"
                     + (f" ({ratio:.1f}x)" if ratio else ""))
    return "; ".join(parts) if parts else "see bench/"


if __name__ == "__main__":
    sys.exit(main())
