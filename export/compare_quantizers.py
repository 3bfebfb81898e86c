"""Measure ONNX Runtime's quantize_static against NVIDIA Model Optimizer's ONNX PTQ on one model.

    python -m admpff.export.compare_quantizers MODEL.onnx CALIB.npz --out DIR [--verify 64] [--method entropy]

Run it in an environment that has Model Optimizer (its own venv: it brings onnxruntime-gpu); the ORT
quantizer runs there too.  Both get the same FP32 graph, the same calibration tensors and the same
excluded head; the table gives time, Q/DQ counts, TensorRT-rule violations and fidelity versus FP32
on held-back crops.  Writes DIR/quantizers.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from admpff.calibration.calibset import CalibrationSet
from admpff.runtime.embedder import load_embedder

from .qdq_check import qdq_summary
from .quantize import quantize_tensorrt_qdq
from .verify import compare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("--out", required=True)
    ap.add_argument("--verify", type=int, default=64, help="held-back crops (taken from the end of CALIB)")
    ap.add_argument("--method", default="entropy")
    a = ap.parse_args(argv)
    ref = load_embedder(a.model)
    full = CalibrationSet.load(a.calib, contract=ref.contract)
    n = len(full) - a.verify
    cal = replace(full, images=full.images[:n], modality=full.modality[:n], origins=full.origins[:n])
    ver_img, ver_mod = full.images[n:], full.modality[n:]
    base = ref.embed_batch(ver_img, ver_mod)
    out = Path(a.out)
    rows = {}
    for quantizer in ("ort", "modelopt"):
        path = out / f"{quantizer}.int8.onnx"
        t0 = time.perf_counter()
        try:
            quantize_tensorrt_qdq(a.model, path, cal, method=a.method, quantizer=quantizer)
        except Exception as exc:  # report, keep measuring the other one
            rows[quantizer] = {"error": str(exc).splitlines()[0]}
            continue
        seconds = time.perf_counter() - t0
        s = qdq_summary(path, max_opset=17)
        emb = load_embedder(path, providers=["CPUExecutionProvider"])
        t1 = time.perf_counter()
        got = emb.embed_batch(ver_img, ver_mod)
        rows[quantizer] = {"seconds": round(seconds, 1), "q_nodes": s.quantize_nodes, "dq_nodes": s.dequantize_nodes,
                           "quantized_convs": s.quantized_convs, "float_convs": s.float_convs,
                           "violations": [str(v) for v in s.violations], "cpu_embed_s": round(time.perf_counter() - t1, 2),
                           **compare(base, got)}
    print(f"{'quantizer':<10}{'time s':>8}{'Q':>5}{'DQ':>5}{'int8 conv':>10}{'violations':>11}{'cos mean':>10}{'cos min':>10}{'top-1':>7}")
    for q, r in rows.items():
        if "error" in r:
            print(f"{q:<10} error: {r['error']}")
            continue
        print(f"{q:<10}{r['seconds']:>8}{r['q_nodes']:>5}{r['dq_nodes']:>5}{r['quantized_convs']:>10}{len(r['violations']):>11}"
              f"{r['cos_mean']:>10.5f}{r['cos_min']:>10.5f}{r['top1_agreement']:>7.3f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantizers.json").write_text(json.dumps({"calibration": len(cal), "verify": len(ver_img), "method": a.method,
                                                     "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
