"""admpff-export: training checkpoint -> ONNX (FP32, FP16, INT8 Q/DQ for TensorRT, CPU-INT8), verified.

    admpff-export runs/sysu/last.pt --out models/ --int8 --calib-data crops/      # FP32 + INT8 Q/DQ
    admpff-export last.pt --out models/ --fp16 --int8 --cpu-int8 --calib-data video.avi
    admpff-export last.pt --out models/ --int8 --calib-data sysu:/data/SYSU-MM01 --verify-data sysu:/data/SYSU-MM01
    admpff-export last.pt --out models/ --int8 --calib-data crops/ --engine --batch 1,8,32   # on a GPU with TensorRT

Files: DIR/<name>.onnx (FP32), <name>.fp16.onnx, <name>.int8.onnx (TensorRT Q/DQ) and <name>.int8.fp16.onnx
(the same Q/DQ with an FP16 float part, for strongly typed TensorRT 10.4+/11), <name>.cpu-int8.onnx
(ONNX Runtime CPU only), <name>.verify.json, and with --engine <name>.<precision>.engine + .json sidecar.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8", "cpu-int8")
#: File stem of every export (the README's models/admpff.onnx, admpff.int8.onnx, ...).
DEFAULT_NAME = "admpff"


def build_parser() -> argparse.ArgumentParser:
    from admpff.runtime.cli_support import make_parser

    ap = make_parser("admpff-export", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("checkpoint", help="checkpoint written by admpff-train (last.pt / best.pt)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--name", default=DEFAULT_NAME, help="file stem of every file written")
    ap.add_argument("--fp16", action="store_true", help="also write <name>.fp16.onnx (strongly typed TensorRT 10/11)")
    ap.add_argument("--int8", action="store_true", help="also write <name>.int8.onnx: Q/DQ for TensorRT 8.5-11")
    ap.add_argument("--cpu-int8", action="store_true", help="also write <name>.cpu-int8.onnx: ONNX Runtime CPU, not TensorRT")
    ap.add_argument("--precision", default=None,
                    help=f"comma list instead of the flags above, from {', '.join(PRECISIONS)}")
    cal = ap.add_argument_group("calibration (INT8)")
    cal.add_argument("--calib-data", action="append", default=[], metavar="SPEC",
                     help="folder of person crops, video file/stream/camera (detector crops), sysu:ROOT or "
                          "regdb:ROOT[:trial] (training split only); repeatable")
    cal.add_argument("--calib-samples", type=int, default=512, help="crops used for calibration (default 512)")
    cal.add_argument("--calib-method", default="percentile",
                     help="percentile (default: the best cosine to FP32 in our measurements), entropy or max")
    cal.add_argument("--calib-seed", type=int, default=0, help="seed of the crop selection")
    cal.add_argument("--calib-modality", default="auto", choices=("auto", "visible", "infrared"),
                     help="modality of every --calib-data source without a visible:/infrared: prefix; auto = "
                          "visible/ infrared/ sub-folders, a video's frames (the runtime's rule with "
                          "hysteresis), a data set's cameras, and only then each crop's own colour")
    cal.add_argument("--calib-cache", default=None, help="npz of calibration tensors, reused when it matches "
                                                          "(default: DIR/<name>.calib.npz)")
    cal.add_argument("--quantizer", default="ort", choices=("ort", "modelopt"),
                     help="Q/DQ quantizer: ONNX Runtime quantize_static (default) or NVIDIA Model Optimizer")
    cal.add_argument("--cpu-int8-kernel", default="auto", choices=("auto", "qgemm", "convsym"),
                     help="ONNX Runtime kernel for CPU-INT8 convolutions: qgemm (AMX), convsym (VNNI) or auto "
                          "(qgemm where this CPU has AMX-INT8); exact either way")
    cal.add_argument("--keep-float", action="append", default=[], metavar="NODE",
                     help="ONNX node name to leave unquantized (repeatable), on top of the embedding head")
    cal.add_argument("--auto-float", type=int, default=4, metavar="K",
                     help="when INT8 Q/DQ misses its fidelity bar, rank layers by sensitivity, keep the worst K "
                          "convolutions in float and re-quantize (default 4; 0 = off)")
    g = ap.add_argument_group("graph")
    g.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17: TensorRT 8.5 parses <= 17)")
    g.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    v = ap.add_argument_group("verification")
    v.add_argument("--no-verify", action="store_true", help="skip the fidelity report")
    v.add_argument("--verify-samples", type=int, default=64, help="held-back crops used to verify (default 64)")
    v.add_argument("--verify-data", default=None, metavar="SPEC",
                   help="sysu:ROOT or regdb:ROOT[:trial]: held-out identities for retrieval mAP per precision")
    v.add_argument("--verify-max-queries", type=int, default=400)
    v.add_argument("--verify-trials", type=int, default=10, metavar="N",
                   help="SYSU-MM01: mAP averaged over the protocol's first N random galleries (default 10, as the "
                        "protocol reports it; one gallery is a noisy measure)")
    v.add_argument("--strict", action="store_true", help="exit 1 when a precision misses its fidelity bar")
    e = ap.add_argument_group("TensorRT engines (needs TensorRT on this machine)")
    e.add_argument("--engine", action="store_true", help="build engines with admpff-build-engine's builder")
    e.add_argument("--batch", default="1,8,32", help="engine batch profile min,opt,max")
    e.add_argument("--workspace", type=float, default=2.0, help="builder workspace in GB")
    srv = ap.add_argument_group("serving (Triton, DeepStream)")
    srv.add_argument("--modality", action="append", default=[], choices=("visible", "infrared"),
                     help="also write <name>.<modality>[.<precision>].onnx for each precision: the modality fixed "
                          "inside the graph, one input (DeepStream, trackers); repeatable")
    srv.add_argument("--triton", default=None, metavar="REPO",
                     help="write a Triton model repository (onnxruntime models, tensorrt_plan configs) for the files")
    srv.add_argument("--triton-max-batch", type=int, default=32, help="max_batch_size of the Triton models")
    srv.add_argument("--triton-queue-delay-us", type=int, default=500,
                     help="dynamic batching queue delay of the Triton models (microseconds)")
    srv.add_argument("--deepstream", default=None, metavar="DIR",
                     help="write nvtracker ReID and nvinfer SGIE configs for the single-input files (needs --modality)")
    ap.add_argument("-q", "--quiet", action="store_true")
    return ap


def _precisions(args) -> list[str]:
    if args.precision:
        wanted = [p.strip().lower() for p in args.precision.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in PRECISIONS]
        if unknown:
            raise ValueError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    else:
        wanted = [p for p, on in (("fp16", args.fp16), ("int8", args.int8), ("cpu-int8", args.cpu_int8)) if on]
    return ["fp32"] + [p for p in PRECISIONS[1:] if p in wanted]


class Stages:
    """Numbered stage lines with timings: the progress display of a multi-minute export."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.n, self.quiet = total, 0, quiet

    def run(self, title: str, fn, *a, **kw):
        self.n += 1
        if not self.quiet:
            print(f"[{self.n}/{self.total}] {title} ...", flush=True)
        t0 = time.perf_counter()
        result = fn(*a, **kw)
        if not self.quiet:
            print(f"      done in {time.perf_counter() - t0:.1f} s", flush=True)
        return result


def run(args) -> int:
    from admpff.calibration import CalibrationError, load_or_build

    from .checkpoint_io import ExportError, model_from_checkpoint
    from .fp16 import convert_fp16
    from .onnx_export import export_fp32
    from .quantize import quantize_cpu_int8, quantize_tensorrt_qdq
    from .verify import format_report, save_report, verify

    from .qat_export import (export_qat_qdq, is_qat_checkpoint_file, load_export_model, next_steps_message,
                             seen_by_qat, verify_on_unseen_crops)

    precisions = _precisions(args)
    qat = is_qat_checkpoint_file(args.checkpoint)  # QAT: the INT8 file carries the learned scales, no calibration
    needs_calib = any(p in precisions for p in (("cpu-int8",) if qat else ("int8", "cpu-int8")))
    if needs_calib and not args.calib_data:
        raise CalibrationError("INT8 needs calibration data and never calibrates on random numbers: pass "
                               "--calib-data with a folder of person crops, a video (crops come from the person "
                               "detector), or sysu:ROOT / regdb:ROOT training data")
    out = _check_arguments(args)
    verify_on = not args.no_verify
    stages = Stages(1 + len(precisions) + (1 if needs_calib or verify_on else 0) + (1 if verify_on else 0)
                    + (1 if args.engine else 0), args.quiet)

    model, config, ckpt_sha = stages.run(f"loading {args.checkpoint}", load_export_model, args.checkpoint)
    contract = model.contract()
    name = args.name or DEFAULT_NAME
    # Calibration problems (no data, an empty folder) surface before any file is written.
    crops = None
    if needs_calib or verify_on:
        sources = args.calib_data
        if not sources:  # FP32/FP16 verification without calibration data: nothing real to compare on
            verify_on = verify_on and bool(args.verify_data)
        else:
            n_verify = args.verify_samples if verify_on else 0
            cache = Path(args.calib_cache) if args.calib_cache else out / f"{name}.calib.npz"
            from admpff.calibration.sources import as_sources
            crops = stages.run(f"collecting {args.calib_samples} calibration + {n_verify} verification crops",
                               load_or_build, cache, as_sources(sources, modality=args.calib_modality),
                               num_samples=args.calib_samples + n_verify, seed=args.calib_seed, contract=contract,
                               note=_say(args), warn_short=False)
    calib = verify_crops = None
    seen_images = getattr(model, "qat_seen_images", None)  # a QAT run's training images: never verify on them
    if crops is not None and seen_images:
        crops = verify_on_unseen_crops(crops, seen_images)
    if crops is not None:
        n_cal = max(1, len(crops) - (args.verify_samples if verify_on else 0))
        calib = _subset(crops, 0, n_cal)
        verify_crops = _subset(crops, n_cal, len(crops)) if len(crops) > n_cal else _subset(crops, 0, len(crops))
        _report_crops(args, crops, calib, verify_crops if len(crops) > n_cal else None)

    files: dict[str, Path] = {}
    files["fp32"] = stages.run(f"exporting FP32 ONNX (opset {args.opset}, onnxslim {'off' if args.no_simplify else 'on'})",
                               export_fp32, model, contract, out / f"{name}.onnx", checkpoint_sha256=ckpt_sha,
                               opset=args.opset, do_simplify=not args.no_simplify)
    if "fp16" in precisions:
        files["fp16"] = stages.run("converting to FP16 internals (FP32 I/O and head)", convert_fp16,
                                   files["fp32"], out / f"{name}.fp16.onnx")
    if "int8" in precisions and qat:
        files["int8-qdq"] = stages.run("INT8 Q/DQ from the QAT checkpoint (learned scales, no calibration)",
                                       export_qat_qdq, model, contract, out / f"{name}.int8.onnx",
                                       checkpoint_sha256=ckpt_sha, opset=args.opset).path
        _check_qdq(files["int8-qdq"], args.opset)
    elif "int8" in precisions:
        r = stages.run(f"INT8 Q/DQ for TensorRT ({args.quantizer}, {args.calib_method}, {len(calib)} crops)",
                       quantize_tensorrt_qdq, files["fp32"], out / f"{name}.int8.onnx", calib,
                       method=args.calib_method, quantizer=args.quantizer, extra_exclude=args.keep_float,
                       ranges_cache=out / f"{name}.int8.ranges.json", opset=args.opset, note=_say(args), quiet=args.quiet)
        files["int8-qdq"] = r.path
        _check_qdq(r.path, args.opset)
    if "int8-qdq" in files:  # what strongly typed TensorRT (10.4+, 11.x) builds; see qdq_fp16
        from .qdq_check import FP16_SCALE_OPSET
        from .qdq_fp16 import convert_qdq_fp16
        stages.total += 1
        files["int8-fp16"] = stages.run("INT8 Q/DQ with an FP16 float part (strongly typed TensorRT 10.4+ / 11)",
                                        convert_qdq_fp16, files["int8-qdq"], out / f"{name}.int8.fp16.onnx")
        _check_qdq(files["int8-fp16"], FP16_SCALE_OPSET)
    if "cpu-int8" in precisions:
        r = stages.run(f"CPU-INT8 (ONNX Runtime QOperator U8S8, {args.calib_method})", quantize_cpu_int8,
                       files["fp32"], out / f"{name}.cpu-int8.onnx", calib, method=args.calib_method,
                       extra_exclude=args.keep_float, ranges_cache=out / f"{name}.cpu-int8.ranges.json",
                       cpu_kernel=args.cpu_int8_kernel, note=_say(args), quiet=args.quiet)
        files["int8-cpu"] = r.path

    reports = []
    if verify_on and verify_crops is not None:
        retrieval = None
        if args.verify_data:
            from .verify_data import load_retrieval_data
            retrieval = load_retrieval_data(args.verify_data, contract, args.verify_max_queries, args.verify_trials)
        variants = {p: f for p, f in files.items() if p != "fp32"}
        reports = stages.run(f"verifying on {len(verify_crops)} held-back crops"
                             + (f" and {args.verify_data}" if retrieval else ""), verify, files["fp32"], variants,
                             verify_crops.images, verify_crops.modality, torch_model=model, retrieval=retrieval)
        extra = {"checkpoint": str(args.checkpoint), "checkpoint_sha256": ckpt_sha}
        if seen_images:
            extra["verify_crops_seen_by_qat"] = seen_by_qat(verify_crops, seen_images)
            if extra["verify_crops_seen_by_qat"]:
                print(f"WARNING: {extra['verify_crops_seen_by_qat']} of the {len(verify_crops)} verification crops are "
                      "training images the QAT run fine-tuned on (too few other crops): give more --calib-data",
                      flush=True)
        failed = [f.precision for f in reports if f.precision in (("int8-cpu",) if qat else ("int8-qdq", "int8-cpu"))
                  and not f.passed]
        if failed and args.auto_float > 0:
            reports, extra["sensitivity"] = _keep_sensitive_layers_float(
                stages, args, files, calib, verify_crops, retrieval, reports, name, out, failed)
        save_report(reports, out / f"{name}.verify.json", extra)
        print("\n" + format_report(reports))
        for f in reports:
            if not f.passed:
                print(f"WARNING: {f.precision} ({f.file}) misses its fidelity bar: {'; '.join(f.failures)}", flush=True)
        print(next_steps_message(args, reports, qat=qat), end="", flush=True)

    engines = {}
    if args.engine:
        from .engine_builder import build_engine_from_onnx
        trt_files = {p: f for p, f in files.items() if p in ("fp32", "fp16", "int8-qdq")}
        engines = stages.run("building TensorRT engines", _build_engines, build_engine_from_onnx, trt_files, args)

    if args.modality or args.triton or args.deepstream:
        from .serving_outputs import write_serving_outputs
        write_serving_outputs(args, files, engines, name, stages, _check_qdq)

    _summary(files, reports, engines)
    if args.strict and any(not f.passed for f in reports):
        return 1
    return 0


def _keep_sensitive_layers_float(stages, args, files, calib, verify_crops, retrieval, reports, name, out, failed):
    """INT8 missed its bar: find the convolutions that cost the most and keep them in float.

    The ranking runs on a Q/DQ graph (it keeps the FP32 tensor names) and on calibration crops; the
    re-quantized files are judged on the held-back crops, and each replaces its first version only if
    it is better."""
    from .quantize import quantize_cpu_int8, quantize_tensorrt_qdq
    from .sensitivity import conv_sensitivity
    from .verify import verify

    probe = _subset(calib, 0, min(16, len(calib)))
    stages.total += 1 + len(failed)
    qdq = files.get("int8-qdq")
    if qdq is None:  # only CPU-INT8 was asked for: a temporary Q/DQ file gives the ranking
        qdq = quantize_tensorrt_qdq(files["fp32"], out / f"{name}.probe.int8.onnx", calib, method=args.calib_method,
                                    quiet=args.quiet).path
    ranking = stages.run(f"INT8 missed its bar: per-layer sensitivity on {len(probe)} crops", conv_sensitivity,
                         files["fp32"], qdq, probe.images, probe.modality)
    if qdq != files.get("int8-qdq"):
        qdq.unlink()
    keep = [e.node for e in ranking[:args.auto_float]]
    print("      most sensitive: " + ", ".join(f"{e.node} (+{e.added:.4f})" for e in ranking[:args.auto_float]))
    kept = {}
    for precision in failed:
        quantize, extra = ((quantize_tensorrt_qdq, {"quantizer": args.quantizer, "opset": args.opset})
                           if precision == "int8-qdq" else (quantize_cpu_int8, {"cpu_kernel": args.cpu_int8_kernel}))
        tag = "int8" if precision == "int8-qdq" else "cpu-int8"
        retry = out / f"{name}.{tag}.retry.onnx"
        stages.run(f"re-quantizing {precision} with {len(keep)} layers kept in float", quantize, files["fp32"], retry,
                   calib, method=args.calib_method, extra_exclude=args.keep_float + keep, quiet=args.quiet, **extra)
        if precision == "int8-qdq":
            _check_qdq(retry, args.opset)
        again = verify(files["fp32"], {precision: retry}, verify_crops.images, verify_crops.modality,
                       retrieval=retrieval)[0]
        before = next(f for f in reports if f.precision == precision)
        if again.passed or (again.cos_min > before.cos_min and again.cos_mean >= before.cos_mean):
            retry.replace(files[precision])
            again.file = files[precision].name
            reports = [again if f is before else f for f in reports]
            kept[precision] = keep
            print(f"      {precision}: kept {len(keep)} layers in float; it now "
                  f"{'meets' if again.passed else 'still misses'} its bar (min cosine {before.cos_min:.4f} -> {again.cos_min:.4f})")
        else:
            retry.unlink()
            print(f"      {precision}: keeping layers in float did not help; the first file stays")
    return reports, {"ranked": [e.to_dict() for e in ranking[:20]], "kept_float": kept, "probe_crops": len(probe)}


def _say(args):
    """Where one-line notes go (reused or rebuilt caches, crop counts): stdout, silent with -q."""
    return (lambda line: None) if args.quiet else (lambda line: print(f"      {line}", flush=True))


def _report_crops(args, crops, calib, verify_crops) -> None:
    """One set of numbers for the crops: what was found, what calibrates, what verifies, and why."""
    counts = ", ".join(f"{n} {m}" for m, n in calib.counts.items())
    held = f", {len(verify_crops)} held back to verify" if verify_crops is not None else ""
    _say(args)(f"{len(crops)} crops: {len(calib)} to calibrate on ({counts}){held}; {crops.skipped} unreadable skipped")
    _say(args)(crops.modality_report())
    if len(calib) < args.calib_samples:
        print(f"WARNING: --calib-data holds {len(crops)} usable crops, so INT8 calibrates on {len(calib)} "
              f"instead of --calib-samples {args.calib_samples}" + (f" ({len(verify_crops)} are held back for "
              f"--verify-samples)" if verify_crops is not None else ""), flush=True)
    for line in crops.modality_warnings():
        print(f"WARNING: {line}", flush=True)


def _check_arguments(args) -> Path:
    """Every flag that can be wrong, and the output folder, checked before minutes of work start."""
    from admpff.runtime.cli_support import CommandError, check_output_file, prepare_output_dir

    for flag, value, low in (("--calib-samples", args.calib_samples, 1), ("--verify-samples", args.verify_samples, 0),
                             ("--auto-float", args.auto_float, 0), ("--verify-max-queries", args.verify_max_queries, 1),
                             ("--verify-trials", args.verify_trials, 1)):
        if value < low:
            raise CommandError(f"{flag} must be >= {low}, not {value}")
    if not 13 <= args.opset <= 21:
        raise CommandError(f"--opset {args.opset}: Q/DQ with per-channel weights needs >= 13 and TensorRT 8.5 "
                           "parses <= 17 (the default); choose 13..21")
    if args.name is not None and (not args.name.strip() or "/" in args.name or args.name in (".", "..")):
        raise CommandError(f"--name {args.name!r} must be a plain file stem (no folders)")
    if args.deepstream and not args.modality:
        raise CommandError("--deepstream needs --modality visible and/or --modality infrared: DeepStream feeds one "
                           "image tensor, so it runs single-input files")
    if args.triton_max_batch < 1 or args.triton_queue_delay_us < 0:
        raise CommandError("--triton-max-batch must be >= 1 and --triton-queue-delay-us >= 0")
    from admpff.calibration.reader import modelopt_calibration_method, normalize_calibration_method
    from admpff.calibration.sources import CalibrationError
    try:
        args.calib_method = normalize_calibration_method(args.calib_method)
        if args.quantizer == "modelopt":
            modelopt_calibration_method(args.calib_method)
    except CalibrationError as exc:
        raise CommandError(f"--calib-method {args.calib_method}: {exc}") from None
    out = prepare_output_dir(args.out, "--out")
    for flag, folder in (("--triton", args.triton), ("--deepstream", args.deepstream)):
        if folder:
            prepare_output_dir(folder, flag)
    if args.calib_cache:
        check_output_file(args.calib_cache, "--calib-cache")
    return out


def _subset(calset, start: int, stop: int):
    from dataclasses import replace
    return replace(calset, images=calset.images[start:stop], modality=calset.modality[start:stop],
                   origins=list(calset.origins[start:stop]))


def _check_qdq(path: Path, opset: int) -> None:
    from .checkpoint_io import ExportError
    from .qdq_check import check_qdq_model

    violations = check_qdq_model(path, max_opset=max(opset, 13))
    if violations:
        raise ExportError(f"{path.name} breaks TensorRT's Q/DQ rules: {violations[0]} (and {len(violations) - 1} more)")


def _build_engines(build, files: dict, args) -> dict:
    out = {}
    for precision, onnx_path in files.items():
        engine = onnx_path.with_suffix(".engine")
        build(onnx_path, engine, batch=args.batch, workspace_gb=args.workspace)
        out[precision] = engine
    return out


def _summary(files: dict, reports: list, engines: dict) -> None:
    verdict = {f.precision: ("ok" if f.passed else "BELOW BAR") for f in reports}
    print(f"\n{'precision':<10}{'file':<44}{'MB':>8}  {'TensorRT':<9}{'verify':<10}")
    for precision, path in files.items():
        trt = "no (CPU)" if precision == "int8-cpu" else "yes"
        print(f"{precision:<10}{str(path):<44}{os.path.getsize(path) / 2**20:>8.1f}  {trt:<9}{verdict.get(precision, '-'):<10}")
    for precision, engine in engines.items():
        print(f"{precision:<10}{str(engine):<44}{os.path.getsize(engine) / 2**20:>8.1f}  engine")


def main(argv=None) -> int:
    from admpff.runtime.cli_support import USAGE_ERROR, CommandError

    args = build_parser().parse_args(argv)
    # -q: ONNX Runtime's quantizer warns on the root logger about things the export already handles.
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    try:
        _check_arguments(args)  # before the heavy imports: a wrong --out costs no torch import
        return run(args)
    except CommandError as exc:
        print(f"admpff-export: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("admpff-export: interrupted; finished files are complete, nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback, for every known failure
        known = _known_errors()
        if isinstance(exc, known):
            print(f"admpff-export: error: {exc}", file=sys.stderr)
            return USAGE_ERROR
        raise


def _known_errors() -> tuple:
    from admpff.calibration import CalibrationError
    from admpff.runtime.embedder import ModelLoadError

    from .checkpoint_io import ExportError
    errors = [ExportError, CalibrationError, ModelLoadError, ValueError, FileNotFoundError]
    try:
        from .engine_builder import EngineBuildError
        errors.append(EngineBuildError)
    except ImportError:
        pass
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
