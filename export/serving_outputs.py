"""admpff-export's serving outputs: ``--modality`` single-input files, ``--triton REPO``, ``--deepstream DIR``.

Kept out of ``cli.py`` so the export command only calls one function once its files are written.
"""
from __future__ import annotations

from pathlib import Path

from .single_modality import fix_modality, single_modality_path


def write_serving_outputs(args, files: dict[str, Path], engines: dict[str, Path], name: str, stages, check_qdq) -> dict:
    """Returns {"<precision>/<modality>": single-input file}; prints what was written."""
    singles: dict[str, Path] = {}
    stages.total += len(set(args.modality)) * len(files) + bool(args.triton) + bool(args.deepstream)
    for modality in dict.fromkeys(args.modality):
        for precision, path in list(files.items()):
            target = single_modality_path(path, modality, name)
            singles[f"{precision}/{modality}"] = stages.run(
                f"fixing modality {modality} in {Path(path).name} -> {target.name}", fix_modality, path, target, modality)
            if precision == "int8-qdq":
                check_qdq(target, args.opset)  # Q/DQ rules still hold once a stem is gone
            elif precision == "int8-fp16":  # FP16 scales: opset 19
                from .qdq_check import FP16_SCALE_OPSET
                check_qdq(target, FP16_SCALE_OPSET)
    if args.triton:
        from .triton_repo import write_triton_repository

        models = stages.run(f"writing Triton model repository {args.triton}", write_triton_repository, args.triton,
                            {**files, **singles}, engines=engines, max_batch=args.triton_max_batch,
                            queue_delay_us=args.triton_queue_delay_us)
        if not args.quiet:
            for m in models:
                state = "ready to load" if m.loadable else "config only: build 1/model.plan on the GPU (see 1/BUILD.md)"
                checked = "config parsed with tritonclient" if m.validated else "config NOT parsed (tritonclient missing)"
                print(f"      {m.name:<36} {m.kind:<14} {state}; {checked}")
    if args.deepstream:
        from .deepstream import write_deepstream

        batch = max(int(b) for b in str(args.batch).split(",") if b.strip())
        written = stages.run(f"writing DeepStream configs to {args.deepstream}", write_deepstream, args.deepstream,
                             {tuple(k.split("/")): v for k, v in singles.items()}, batch=batch)
        if not args.quiet:
            for f in written:
                print(f"      {f.modality:<9} {f.precision:<9} {f.tracker.name}  {f.nvinfer.name}")
    if singles and not args.quiet:
        for key, path in singles.items():
            print(f"      single-input {key:<18} {path}")
    return singles
