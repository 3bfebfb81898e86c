"""CPU throughput of ADMPFF-Net in PyTorch eager: forward (eval) and forward+backward (training step).

    python -m admpff.training.bench_model [--batch 8] [--iters 5] [--json out.json]

Prints a table (median, p90, p99 seconds per batch, images/s) and writes JSON.  A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from admpff.training.losses import MGJLoss
from admpff.training.model import ADMPFFNet, ModelConfig, parameter_count


def _stats(times: list[float], batch: int) -> dict:
    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "p90_s": float(np.percentile(t, 90)),
            "p99_s": float(np.percentile(t, 99)), "images_per_s": batch / float(np.median(t)), "iters": len(t)}


def run(batch: int, iters: int, warmup: int, backbone: str, height: int, width: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ADMPFFNet(ModelConfig(num_classes=395, backbone=backbone, height=height, width=width))
    x = torch.randn(batch, 3, height, width)
    modality = torch.zeros(batch, dtype=torch.long)
    model.eval()
    fwd = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            model(x, modality)
            if i >= warmup:
                fwd.append(time.perf_counter() - t0)
    model.train()
    loss_fn = MGJLoss()
    half = max(batch // 2, 2)
    xv, xi = torch.randn(half, 3, height, width), torch.randn(half, 3, height, width)
    labels = torch.arange(half) % 2
    labels = torch.cat([labels, labels])
    mods = torch.cat([torch.zeros(half, dtype=torch.long), torch.ones(half, dtype=torch.long)])
    bwd = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model(xv, xi), labels, mods)
        loss.backward()
        if i >= warmup:
            bwd.append(time.perf_counter() - t0)
    return {"config": {"backbone": backbone, "input": [height, width], "batch": batch, "threads": torch.get_num_threads(),
                       "parameters": parameter_count(model),
                       "backbone_parameters": sum(p.numel() for p in model.backbone_parameters())},
            "forward": _stats(fwd, batch), "forward_backward": _stats(bwd, 2 * half)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", default="288x144", help="HxW")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default="bench-model.json")
    a = ap.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    r = run(a.batch, a.iters, a.warmup, a.backbone, h, w, a.threads)
    c = r["config"]
    print(f"ADMPFF-Net {c['backbone']} {h}x{w}, {c['parameters'] / 1e6:.1f} M parameters "
          f"({c['backbone_parameters'] / 1e6:.1f} M backbone), {c['threads']} threads")
    print(f"{'pass':<18}{'batch':>6}{'median s':>10}{'p90 s':>9}{'p99 s':>9}{'images/s':>10}")
    for name in ("forward", "forward_backward"):
        s = r[name]
        b = a.batch if name == "forward" else 2 * max(a.batch // 2, 2)
        print(f"{name:<18}{b:>6}{s['median_s']:>10.3f}{s['p90_s']:>9.3f}{s['p99_s']:>9.3f}{s['images_per_s']:>10.2f}")
    with open(a.json, "w") as f:
        json.dump(r, f, indent=2)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
