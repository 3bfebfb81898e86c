"""Triton model repository for Triton's own backends: ``admpff-export ... --triton REPO``.

One Triton model per exported file, named after the file (``<name>.int8.onnx`` -> ``<name>_int8``):

* ONNX files -> ``backend: "onnxruntime"``, ``1/model.onnx``, ``instance_group { kind: KIND_AUTO }`` (GPU
  when the server has one), except CPU-INT8, which is ``KIND_CPU`` (ONNX Runtime's CPU kernels only);
* TensorRT engines -> ``platform: "tensorrt_plan"``, ``1/model.plan``, ``KIND_GPU``.  Without an engine
  (none is built on a machine without TensorRT) the folder gets the config and a ``1/BUILD.md`` saying
  how to build ``model.plan`` on the serving GPU; Triton will not load that model until it is there.

Every config carries ``max_batch_size``, ``dynamic_batching`` with a queue delay, the contract's inputs
(``modality`` per sample, absent in single-input files) and output, and the file's ``admpff.*`` metadata in
``parameters``, from which ``load_embedder("grpc://host:8001/<model>")`` reads the contract.  Each written
config is parsed back with the ``ModelConfig`` schema that tritonclient ships, when it is installed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from admpff.runtime.atomic import write_bytes, write_text
from admpff.runtime.contract import CONTRACT_KEY, InputContract
from admpff.runtime.triton_config import TritonModelSpec, contract_parameters, model_config_text, validate_config_text

from .checkpoint_io import ExportError

__all__ = ["TritonModel", "triton_model_name", "write_onnx_model", "write_tensorrt_plan_model", "write_triton_repository"]


@dataclass
class TritonModel:
    name: str
    folder: Path
    kind: str              # "onnxruntime" or "tensorrt_plan"
    source: Path | None
    loadable: bool         # False for a tensorrt_plan folder still waiting for its engine
    validated: bool        # parsed back with tritonclient's ModelConfig schema


def triton_model_name(file_name: str) -> str:
    """``admpff-r50.visible.int8.onnx`` -> ``admpff-r50_visible_int8`` (Triton names: no dots needed)."""
    stem = re.sub(r"\.(onnx|engine|plan|trt)$", "", file_name)
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem.replace(".", "_"))


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if CONTRACT_KEY not in meta:
        raise ExportError(f"{path.name} carries no admpff contract")
    return meta


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (same file system, no second copy of a large model), else copy atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp-link")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        write_bytes(dst, Path(src).read_bytes())


def _write_config(folder: Path, spec: TritonModelSpec) -> bool:
    text = model_config_text(spec)
    try:
        validate_config_text(text, f"{folder.name}/config.pbtxt")
        validated = True
    except ImportError:
        validated = False  # tritonclient absent: written but not parsed back
    write_text(folder / "config.pbtxt", text)
    return validated


def write_onnx_model(repo: str | Path, onnx_path: str | Path, *, precision: str, max_batch: int = 32,
                     queue_delay_us: int = 500, instances: int = 1) -> TritonModel:
    onnx_path = Path(onnx_path)
    meta = _onnx_metadata(onnx_path)
    contract = InputContract.from_json(meta[CONTRACT_KEY])
    name = triton_model_name(onnx_path.name)
    folder = Path(repo) / name
    kind = "KIND_CPU" if precision == "int8-cpu" else "KIND_AUTO"
    spec = TritonModelSpec(name=name, contract=contract, max_batch_size=max_batch, backend="onnxruntime",
                           default_model_filename="model.onnx", queue_delay_us=queue_delay_us,
                           instance_count=instances, instance_kind=kind, parameters=contract_parameters(meta))
    _place(onnx_path, folder / "1" / "model.onnx")
    validated = _write_config(folder, spec)
    return TritonModel(name, folder, "onnxruntime", onnx_path, True, validated)


def write_tensorrt_plan_model(repo: str | Path, onnx_path: str | Path, engine: str | Path | None = None, *,
                              max_batch: int = 32, queue_delay_us: int = 500, instances: int = 1,
                              min_batch: int = 1) -> TritonModel:
    """A ``tensorrt_plan`` model for the engine built from ``onnx_path`` (its metadata gives the contract).

    The engine's optimisation profile must cover batches 1..``max_batch`` (Triton sends any size up to it)."""
    onnx_path = Path(onnx_path)
    meta = _onnx_metadata(onnx_path)
    contract = InputContract.from_json(meta[CONTRACT_KEY])
    name = triton_model_name(onnx_path.name) + "_trt"
    folder = Path(repo) / name
    params = contract_parameters(meta)
    params["admpff.engine_profile"] = f"{min_batch},{max_batch},{max_batch}"
    spec = TritonModelSpec(name=name, contract=contract, max_batch_size=max_batch, platform="tensorrt_plan",
                           default_model_filename="model.plan", queue_delay_us=queue_delay_us,
                           instance_count=instances, instance_kind="KIND_GPU", parameters=params)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    if engine is not None:
        _place(Path(engine), folder / "1" / "model.plan")
        stale = folder / "1" / "BUILD.md"
        if stale.exists():
            stale.unlink()
    else:
        write_text(folder / "1" / "BUILD.md",
                   f"# Build model.plan here, on the GPU that serves it\n\n"
                   f"TensorRT engines are tied to the GPU and TensorRT version, so none ships in this repository.\n"
                   f"On the serving machine (same TensorRT as its Triton):\n\n"
                   f"    admpff-build-engine {onnx_path.name} --batch 1,{max(1, max_batch // 4)},{max_batch} "
                   f"--out {name}/1/model.plan\n\n"
                   f"or `trtexec --onnx={onnx_path.name} --saveEngine={name}/1/model.plan "
                   f"--minShapes=images:1x3x{contract.height}x{contract.width} "
                   f"--maxShapes=images:{max_batch}x3x{contract.height}x{contract.width}` "
                   f"(plus the same shapes for `modality`: 1 and {max_batch}).\n"
                   f"The profile must cover batch 1..{max_batch} (max_batch_size in config.pbtxt).\n")
    validated = _write_config(folder, spec)
    return TritonModel(name, folder, "tensorrt_plan", Path(engine) if engine else None, engine is not None, validated)


def write_triton_repository(repo: str | Path, files: dict[str, Path], *, engines: dict[str, Path] | None = None,
                            max_batch: int = 32, queue_delay_us: int = 500, instances: int = 1) -> list[TritonModel]:
    """``files``: {precision: ONNX} as admpff-export names them (fp32, fp16, int8-qdq, int8-cpu, and
    ``<precision>/<modality>`` for single-input files); ``engines``: {precision: engine} where built."""
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    models = []
    for key, path in files.items():
        precision = key.split("/")[0]
        models.append(write_onnx_model(repo, path, precision=precision, max_batch=max_batch,
                                       queue_delay_us=queue_delay_us, instances=instances))
        if precision in ("fp32", "fp16", "int8-qdq", "int8-fp16"):  # what TensorRT builds
            models.append(write_tensorrt_plan_model(repo, path, (engines or {}).get(key), max_batch=max_batch,
                                                    queue_delay_us=queue_delay_us, instances=instances))
    return models
