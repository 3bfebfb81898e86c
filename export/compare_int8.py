"""Post-training INT8 against QAT INT8, side by side, both measured against the FP32 model they replace.

    python -m admpff.export.compare_int8 runs/sysu/last.pt runs/sysu/qat/last.pt --out cmp \\
        --calib-data sysu:/data/SYSU-MM01 --verify-data sysu:/data/SYSU-MM01 [--calib-samples 512 --verify-samples 64]

Exports (with ``admpff-export``'s own code) the source checkpoint's FP32 and post-training INT8 Q/DQ files
and the QAT checkpoint's INT8 Q/DQ file (its learned scales), then runs the INT8 files with real INT8
kernels (OpenVINO, float part pinned to f32) and with ONNX Runtime, on the same held-back crops and the
same held-out identities.  The reference for every row is the SOURCE model's FP32 file (ONNX Runtime):
QAT changes the weights, and what matters is how close the INT8 file comes to the model it replaces.
The QAT file against its own float twin is shown too.  Writes DIR/int8_comparison.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np


def _export(checkpoint: str, out: Path, args) -> dict:
    from . import cli as export_cli

    done = out / "m.int8.onnx"
    if done.is_file() and done.stat().st_mtime > max(Path(checkpoint).stat().st_mtime, args.crops_cache.stat().st_mtime):
        return {"seconds": None, "reused": str(done)}  # same checkpoint, already exported by an earlier run

    argv = [checkpoint, "--out", str(out), "--name", "m", "--int8", "--calib-data", *args.calib_data[:1],
            "--calib-cache", str(args.crops_cache),
            "--calib-samples", str(args.calib_samples), "--verify-samples", str(args.verify_samples),
            "--no-verify", "--auto-float", "0", "-q"]
    for spec in args.calib_data[1:]:
        argv += ["--calib-data", spec]
    t0 = time.perf_counter()
    code = export_cli.main(argv)
    if code != 0:
        raise SystemExit(f"compare_int8: admpff-export failed on {checkpoint} (exit {code})")
    return {"seconds": time.perf_counter() - t0}


def _shared_crops(args, out: Path):
    """One crop set for both exports (``--calib-cache``), ordered as the QAT export orders it: the crops the
    QAT run trained on first, so the held-back verification crops (the last ones) are crops it never saw,
    and post-training INT8 calibrates on the others.  -> (crops, the QAT run's training images)."""
    import torch

    from admpff.calibration import load_or_build
    from admpff.calibration.sources import as_sources
    from admpff.runtime.contract import InputContract

    from .qat_export import verify_on_unseen_crops

    ckpt = torch.load(args.qat, map_location="cpu", weights_only=False)
    seen = frozenset(ckpt.get("qat", {}).get("seen_images") or ())
    contract = InputContract.from_dict(ckpt["config"]["contract"])
    del ckpt
    args.crops_cache = out / "crops.npz"
    crops = load_or_build(args.crops_cache, as_sources(args.calib_data), num_samples=args.calib_samples + args.verify_samples,
                          seed=0, contract=contract, warn_short=False)
    ordered = verify_on_unseen_crops(crops, seen)
    if ordered.origins != crops.origins:
        ordered.save(args.crops_cache)  # same request, new order: both exports reuse it as it is
    return ordered, seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m admpff.export.compare_int8", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="the FP32 training checkpoint (post-training INT8 starts here)")
    ap.add_argument("qat", help="the QAT checkpoint trained from it (admpff-train --qat-from SOURCE)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib-data", action="append", required=True, metavar="SPEC")
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--verify-samples", type=int, default=64)
    ap.add_argument("--verify-data", default=None, metavar="SPEC", help="held-out identities for retrieval mAP")
    ap.add_argument("--verify-max-queries", type=int, default=400)
    ap.add_argument("--verify-trials", type=int, default=10, help="SYSU-MM01 galleries the mAP is averaged over")
    args = ap.parse_args(argv)

    from admpff.calibration.calibset import CalibrationSet
    from admpff.runtime.embedder import load_embedder

    from .verify import compare, retrieval_map
    from .verify_data import load_retrieval_data
    from .qat_export import seen_by_qat
    from .verify_int8_kernels import int8_layer_counts, load_real_int8

    out = Path(args.out)
    crops, seen = _shared_crops(args, out)
    timings = {"ptq_export": _export(args.source, out / "ptq", args), "qat_export": _export(args.qat, out / "qat", args)}
    fp32 = load_embedder(out / "ptq" / "m.onnx", backend="onnxruntime")
    images, modality = crops.images[-args.verify_samples:], crops.modality[-args.verify_samples:]
    held = CalibrationSet(images=images, modality=modality, origins=crops.origins[-args.verify_samples:])
    seen_in_verify = seen_by_qat(held, seen)
    print(f"{len(images)} held-back verification crops; {seen_in_verify} of them among the {len(seen)} training "
          f"images the QAT run used; PTQ calibrated on the {len(crops) - len(images)} others")
    retrieval = load_retrieval_data(args.verify_data, fp32.contract, args.verify_max_queries,
                                    max(1, args.verify_trials)) if args.verify_data else None
    ref = fp32.embed_batch(images, modality)
    ref_map = retrieval_map(fp32, retrieval) if retrieval else None
    qat_float = load_embedder(out / "qat" / "m.onnx", backend="onnxruntime")
    rows = [{"model": "FP32 (source)", "backend": "onnxruntime", **compare(ref, ref), "mAP": ref_map}]
    files = {"PTQ INT8": out / "ptq" / "m.int8.onnx", "QAT INT8": out / "qat" / "m.int8.onnx"}
    for label, path in files.items():
        for backend in ("openvino-int8", "onnxruntime"):
            emb = load_real_int8(path) if backend == "openvino-int8" else load_embedder(path, backend="onnxruntime")
            row = {"model": label, "backend": backend, **compare(ref, emb.embed_batch(images, modality)),
                   "mAP": retrieval_map(emb, retrieval) if retrieval else None}
            if backend == "openvino-int8":
                row.update(int8_layer_counts(emb))
            rows.append(row)
    qf = qat_float.embed_batch(images, modality)
    rows.append({"model": "QAT float twin", "backend": "onnxruntime", **compare(ref, qf),
                 "mAP": retrieval_map(qat_float, retrieval) if retrieval else None})
    qat_vs_own = compare(qf, load_real_int8(files["QAT INT8"]).embed_batch(images, modality))
    rows.append({"model": "QAT INT8 vs its float twin", "backend": "openvino-int8", **qat_vs_own, "mAP": None})

    print(f"\n{'model':<28}{'backend':<15}{'cos mean':>10}{'cos min':>10}{'top-1 NN':>10}{'mAP':>8}{'dmAP':>7}")
    for r in rows:
        m = f"{r['mAP']:8.2f}" if r.get("mAP") is not None else f"{'-':>8}"
        d = f"{r['mAP'] - ref_map:+7.2f}" if r.get("mAP") is not None and ref_map is not None else f"{'-':>7}"
        print(f"{r['model']:<28}{r['backend']:<15}{r['cos_mean']:>10.5f}{r['cos_min']:>10.5f}"
              f"{r['top1_agreement']:>10.3f}{m}{d}")
    from admpff.runtime.atomic import write_json
    write_json(out / "int8_comparison.json", {"source": args.source, "qat": args.qat, "crops": len(images),
                                              "verify_crops_seen_by_qat": seen_in_verify,
                                              "verify_data": args.verify_data, "rows": rows, "timings": timings,
                                              "reference": "source FP32 ONNX on ONNX Runtime"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
