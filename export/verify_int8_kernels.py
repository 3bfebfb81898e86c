"""Verify a Q/DQ file as a device runs it: with real INT8 kernels (OpenVINO on x86), beside ONNX Runtime.

ONNX Runtime's CPU provider executes a Q/DQ graph partly in float (it dequantizes where it has no fused
int8 kernel), so its figures can flatter a file whose integer arithmetic a device would get wrong.
OpenVINO's CPU plugin turns each QuantizeLinear/DequantizeLinear pair into a FakeQuantize and runs the
quantized convolutions with int8 kernels (VNNI/AMX): the error it shows is the INT8 error of the file.
The non-quantized part is pinned to f32, so that bf16 (the plugin's default on AMX/AVX512-BF16 CPUs)
adds nothing of its own.

``real_int8_fidelity`` turns ONNX Runtime's report of an ``int8-qdq`` file into the judged real-INT8
report (ONNX Runtime's figures kept beside it); it also counts how many convolutions OpenVINO really
ran in int8, and fails a file where none were.  As a command::

    python -m admpff.export.verify_int8_kernels MODEL.int8.onnx --fp32 MODEL.onnx --crops CALIB.npz [--json verify.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .verify import Fidelity, compare, judge

BACKEND = "openvino-int8"
INT8_PRECISIONS = ("i8", "u8")


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def int8_layer_counts(embedder) -> dict[str, int]:
    """Convolutions OpenVINO executes in int8 vs other precisions (from its runtime graph)."""
    counts = {"int8_convolutions": 0, "other_convolutions": 0}
    for op in embedder.compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        text = lambda key: rt[key].astype(str) if key in rt else ""  # noqa: E731 (OVAny values)
        if "Convolution" not in text("layerType"):
            continue
        precision = text("runtimePrecision").lower()
        counts["int8_convolutions" if precision in INT8_PRECISIONS else "other_convolutions"] += 1
    return counts


def load_real_int8(path: str | Path, threads: int | None = 2):
    """An OpenVINO embedder for a Q/DQ file: quantized layers in int8, the rest pinned to f32."""
    from admpff.runtime.openvino_backend import OpenVINOEmbedder
    return OpenVINOEmbedder(path, precision="f32", threads=threads)


def real_int8_fidelity(ort: Fidelity, path: str | Path, reference: np.ndarray, images: np.ndarray,
                       modality: np.ndarray, *, retrieval=None, reference_map: float | None = None) -> Fidelity:
    """The judged report of an INT8 Q/DQ file: OpenVINO's real-INT8 figures, ONNX Runtime's beside them.

    Without OpenVINO the ONNX Runtime report stays the judged one and says so."""
    ort_figures = {k: v for k, v in asdict(ort).items() if k in ("max_abs", "cos_mean", "cos_min",
                                                                  "top1_agreement", "mAP", "failures")}
    if not openvino_available():
        ort.details = dict(ort.details, real_int8="not checked: openvino is not installed (pip install openvino)")
        return ort
    from .verify import retrieval_map

    emb = load_real_int8(path)
    counts = int8_layer_counts(emb)
    f = Fidelity(ort.precision, ort.file, ort.reference, len(images), **compare(reference, emb.embed_batch(images, modality)))
    f.backend = BACKEND
    if retrieval is not None:
        f.mAP, f.mAP_reference = retrieval_map(emb, retrieval), reference_map
    f.details = dict(ort.details, **counts, inference_precision=emb.inference_precision,
                     onnxruntime=ort_figures)
    judge(f)
    if counts["int8_convolutions"] == 0:
        f.failures.append("OpenVINO ran no convolution in INT8: this is not a working Q/DQ file")
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m admpff.export.verify_int8_kernels",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("qdq", help="the INT8 Q/DQ ONNX (<name>.int8.onnx)")
    ap.add_argument("--fp32", required=True, help="the FP32 ONNX it was made from (the reference)")
    ap.add_argument("--crops", required=True, help="calibration/verification tensors (.npz from admpff-export)")
    ap.add_argument("--samples", type=int, default=64, help="crops to verify on: the last N of the file")
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args(argv)
    from admpff.calibration.calibset import CalibrationSet
    from admpff.runtime.embedder import ModelLoadError, load_embedder

    try:
        fp32 = load_embedder(args.fp32, backend="onnxruntime")
        crops = CalibrationSet.load(args.crops, fp32.contract)
        images, modality = crops.images[-args.samples:], crops.modality[-args.samples:]
        ref = fp32.embed_batch(images, modality)
        ort = Fidelity("int8-qdq", Path(args.qdq).name, "fp32 onnx", len(images),
                       **compare(ref, load_embedder(args.qdq, backend="onnxruntime").embed_batch(images, modality)))
        judge(ort)
        f = real_int8_fidelity(ort, args.qdq, ref, images, modality)
    except (ModelLoadError, OSError, ValueError) as exc:
        print(f"verify_int8_kernels: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    o = f.details.get("onnxruntime", {})
    print(f"{'backend':<16}{'cos mean':>10}{'cos min':>10}{'top-1 NN':>10}")
    if o:
        print(f"{'onnxruntime':<16}{o['cos_mean']:>10.5f}{o['cos_min']:>10.5f}{o['top1_agreement']:>10.3f}")
    print(f"{f.backend:<16}{f.cos_mean:>10.5f}{f.cos_min:>10.5f}{f.top1_agreement:>10.3f}  "
          + ("ok" if f.passed else "FAIL: " + "; ".join(f.failures)))
    if args.json:
        from admpff.runtime.atomic import write_json
        write_json(Path(args.json), dict(asdict(f), passed=f.passed))
    return 0 if f.passed else 1


if __name__ == "__main__":
    sys.exit(main())
