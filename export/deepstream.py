"""DeepStream configuration for the single-input (modality-fixed) exports: ``admpff-export ... --deepstream DIR``.

For every TensorRT-ready single-input file (FP32, FP16, INT8 Q/DQ; not CPU-INT8) DIR receives a copy of
the ONNX and

* ``config_tracker_<stem>.yml``: a Gst-nvtracker (NvMultiObjectTracker) low-level config whose ``ReID:``
  section runs this model (NvDeepSORT-style, ``reidType: 1``, ``outputReidTensor: 1``);
* ``config_sgie_<stem>.txt``: a Gst-nvinfer secondary-GIE config (``process-mode=2``, ``network-type=100``,
  ``output-tensor-meta=1``) that attaches each person's embedding to its object as tensor meta;
* ``README.md``: how to wire them into a pipeline on JetPack 5, 6 and 7.

Preprocessing: the graph normalises inside (ImageNet mean/std on 0..255 RGB), so DeepStream's
``y = netScaleFactor * (x - offsets)`` must be the identity: offsets 0, scale 1, RGB, NCHW, stretched
(no aspect-ratio padding, as admpff's own runtime resizes).  Keys were checked against DeepStream 9.2's
documentation (nvinfer: ``gstnvinfer_property_parser.h`` and the Gst-nvinfer page; nvtracker: the
Gst-nvtracker page's ReID table and ``ReIDConfigParams``); nothing here ran on DeepStream.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from admpff.runtime.atomic import write_text
from admpff.runtime.contract import CONTRACT_KEY, InputContract

from .checkpoint_io import ExportError

__all__ = ["DeepStreamFiles", "TRACKER_NETWORK_MODE", "NVINFER_NETWORK_MODE", "TRACKER_REID_KEYS", "NVINFER_KEYS",
           "write_deepstream", "tracker_reid_values", "nvinfer_values"]

# The two plugins number precisions differently (documented in each plugin's config table).
# int8-fp16 (Q/DQ with an FP16 float part) is an INT8 file to both.
TRACKER_NETWORK_MODE = {"fp32": 0, "fp16": 1, "int8-qdq": 2, "int8-fp16": 2}  # nvtracker ReID: 0 FP32, 1 FP16, 2 INT8
NVINFER_NETWORK_MODE = {"fp32": 0, "int8-qdq": 1, "int8-fp16": 1, "fp16": 2}  # nvinfer: 0 FP32, 1 INT8, 2 FP16

# Keys as the documentation lists them (DeepStream 9.2): what the tests check every written key against.
TRACKER_REID_KEYS = frozenset({
    "reidType", "outputReidTensor", "batchSize", "workspaceSize", "reidFeatureSize", "reidHistorySize",
    "inferDims", "networkMode", "inputOrder", "colorFormat", "offsets", "netScaleFactor", "keepAspc",
    "useVPICropScaler", "addFeatureNormalization", "onnxFile", "modelEngineFile", "tltEncodedModel", "tltModelKey"})
TRACKER_OTHER_KEYS = {
    "BaseConfig": frozenset({"minDetectorConfidence"}),
    "TargetManagement": frozenset({"maxTargetsPerStream", "probationAge", "maxShadowTrackingAge", "earlyTerminationAge",
                                   "minTrackerConfidence", "preserveStreamUpdateOrder", "enableBboxUnClipping",
                                   "minIouDiff4NewTarget"}),
    "TrajectoryManagement": frozenset({"useUniqueID", "enableReAssoc"}),
    "DataAssociator": frozenset({"dataAssociatorType", "associationMatcherType", "checkClassMatch",
                                 "minMatchingScore4Overall", "minMatchingScore4SizeSimilarity", "minMatchingScore4Iou",
                                 "minMatchingScore4VisualSimilarity", "matchingScoreWeight4VisualSimilarity",
                                 "matchingScoreWeight4SizeSimilarity", "matchingScoreWeight4Iou"}),
    "StateEstimator": frozenset({"stateEstimatorType"}),
}
NVINFER_KEYS = frozenset({
    "gpu-id", "gie-unique-id", "process-mode", "operate-on-gie-id", "operate-on-class-ids", "network-type",
    "output-tensor-meta", "onnx-file", "model-engine-file", "batch-size", "network-mode", "workspace-size",
    "model-color-format", "net-scale-factor", "offsets", "maintain-aspect-ratio", "infer-dims", "output-blob-names",
    "input-object-min-width", "input-object-min-height", "interval", "secondary-reinfer-interval"})

TRT_PRECISIONS = tuple(TRACKER_NETWORK_MODE)


@dataclass
class DeepStreamFiles:
    precision: str
    modality: str
    onnx: Path
    tracker: Path
    nvinfer: Path


def _contract(onnx_path: Path) -> tuple[InputContract, str]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    if "admpff.fixed_modality" not in meta:
        raise ExportError(f"{onnx_path.name} takes two inputs; DeepStream needs a single-input file (--modality)")
    return InputContract.from_json(meta[CONTRACT_KEY]), meta["admpff.fixed_modality"]


_ENGINE_MODE = {"fp32": "fp32", "fp16": "fp16", "int8-qdq": "int8", "int8-fp16": "int8"}


def _engine_name(onnx_name: str, batch: int, precision: str, plugin: str) -> str:
    """nvinfer's own name for the engine it serialises (``<onnx>_b<batch>_gpu0_<mode>.engine``), so a second
    start reuses it; the tracker's engine gets a ``.tracker`` tag so the two never overwrite each other."""
    mode = _ENGINE_MODE[precision]
    return f"{onnx_name}_b{batch}_gpu0_{mode}.engine" if plugin == "sgie" else f"{onnx_name}_b{batch}_gpu0_{mode}.tracker.engine"


def tracker_reid_values(contract: InputContract, precision: str, onnx_name: str, batch: int,
                        engine_name: str, reid_type: int = 1) -> dict:
    """The ``ReID:`` section for this model (the values the tests compare with the contract)."""
    return {
        "reidType": reid_type,             # 1: NvDeepSORT association; 2: re-association (NvDCF); 3: both
        "outputReidTensor": 1,             # export each object's embedding in the tracker's user meta
        "batchSize": batch,
        "workspaceSize": 1000,             # MB for the TensorRT builder
        "reidFeatureSize": contract.embedding_dim,
        "reidHistorySize": 100,
        "inferDims": [3, contract.height, contract.width],
        "networkMode": TRACKER_NETWORK_MODE[precision],
        "inputOrder": 0,                   # NCHW
        "colorFormat": 0 if contract.channel_order == "RGB" else 1,
        "offsets": [0.0, 0.0, 0.0],        # the graph subtracts the mean itself
        "netScaleFactor": 1.0,             # ... and divides by the std
        "keepAspc": 0,                     # stretch, as admpff's runtime resizes
        "addFeatureNormalization": 1,      # already unit length; renormalises reduced-precision output
        "onnxFile": onnx_name,
        "modelEngineFile": engine_name,    # built from onnxFile on first run when absent
    }


def nvinfer_values(contract: InputContract, precision: str, onnx_name: str, batch: int, engine_name: str,
                   gie_id: int = 2, operate_on_gie_id: int = 1, person_class_id: int = 0) -> dict:
    return {
        "gpu-id": 0,
        "gie-unique-id": gie_id,
        "process-mode": 2,                 # secondary: runs on objects, not frames
        "operate-on-gie-id": operate_on_gie_id,
        "operate-on-class-ids": person_class_id,
        "network-type": 100,               # "other": no parser; the output stays a tensor
        "output-tensor-meta": 1,           # attach NvDsInferTensorMeta to each object
        "onnx-file": onnx_name,
        "model-engine-file": engine_name,
        "batch-size": batch,
        "network-mode": NVINFER_NETWORK_MODE[precision],
        "workspace-size": 1000,
        "model-color-format": 0 if contract.channel_order == "RGB" else 1,
        "net-scale-factor": 1.0,
        "offsets": "0;0;0",
        "maintain-aspect-ratio": 0,
        "infer-dims": f"3;{contract.height};{contract.width}",
        "output-blob-names": contract.output_name,
        "input-object-min-width": 16,
        "input-object-min-height": 32,
    }


def _yaml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _tracker_text(reid: dict, modality: str, precision: str, source: str) -> str:
    sections = {
        "BaseConfig": {"minDetectorConfidence": 0.2},
        "TargetManagement": {"maxTargetsPerStream": 150, "probationAge": 3, "maxShadowTrackingAge": 30,
                             "earlyTerminationAge": 1},
        "TrajectoryManagement": {"useUniqueID": 0},
        "DataAssociator": {"dataAssociatorType": 0, "associationMatcherType": 1, "checkClassMatch": 1,
                           "minMatchingScore4Overall": 0.0, "minMatchingScore4Iou": 0.0,
                           "minMatchingScore4VisualSimilarity": 0.3, "matchingScoreWeight4VisualSimilarity": 0.7,
                           "matchingScoreWeight4Iou": 0.3},
        "StateEstimator": {"stateEstimatorType": 2},
    }
    lines = ["%YAML:1.0",
             f"# Gst-nvtracker low-level config (NvMultiObjectTracker) for admpff, {modality} crops, {precision}.",
             f"# Written by admpff-export from {source}. The ReID section matches the model's contract; the other",
             "# sections are starting points for an NvDeepSORT-style tracker: tune them on your cameras, or copy the",
             "# ReID section into NVIDIA's tuned config_tracker_NvDCF_accuracy.yml with reidType: 2.", ""]
    for section, values in list(sections.items()) + [("ReID", reid)]:
        lines.append(f"{section}:")
        lines.extend(f"  {k}: {_yaml_value(v)}" for k, v in values.items())
        lines.append("")
    return "\n".join(lines)


def _nvinfer_text(values: dict, modality: str, precision: str, source: str) -> str:
    lines = [f"# Gst-nvinfer secondary GIE: admpff embeddings ({modality} crops, {precision}) as object tensor meta.",
             f"# Written by admpff-export from {source}. network-mode: 0 FP32, 1 INT8, 2 FP16 (nvinfer's numbering).",
             "[property]"]
    lines.extend(f"{k}={v}" for k, v in values.items())
    return "\n".join(lines) + "\n"


def write_deepstream(out_dir: str | Path, singles: dict[tuple[str, str], Path], *, batch: int = 32,
                     engines: dict[tuple[str, str], Path] | None = None) -> list[DeepStreamFiles]:
    """``singles``: {(precision, modality): single-input ONNX}.  Files that TensorRT cannot run (CPU-INT8)
    are skipped.  Returns what was written, one entry per file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (precision, modality), onnx_path in sorted(singles.items()):
        if precision not in TRT_PRECISIONS:
            continue
        contract, fixed = _contract(Path(onnx_path))
        if fixed != modality:
            raise ExportError(f"{Path(onnx_path).name} is fixed to {fixed}, not {modality}")
        local = out / Path(onnx_path).name
        if local.resolve() != Path(onnx_path).resolve():
            shutil.copyfile(onnx_path, local)
        engine = (engines or {}).get((precision, modality))
        stem = local.name[:-len(".onnx")]
        tracker_engine = engine.name if engine else _engine_name(local.name, batch, precision, "tracker")
        sgie_engine = engine.name if engine else _engine_name(local.name, batch, precision, "sgie")
        if engine and engine.resolve() != (out / engine.name).resolve():
            shutil.copyfile(engine, out / engine.name)
        reid = tracker_reid_values(contract, precision, local.name, batch, tracker_engine)
        tracker = write_text(out / f"config_tracker_{stem}.yml", _tracker_text(reid, modality, precision, Path(onnx_path).name))
        sgie = write_text(out / f"config_sgie_{stem}.txt",
                          _nvinfer_text(nvinfer_values(contract, precision, local.name, batch, sgie_engine),
                                        modality, precision, Path(onnx_path).name))
        written.append(DeepStreamFiles(precision, modality, local, Path(tracker), Path(sgie)))
    if not written:
        raise ExportError("--deepstream needs a TensorRT-ready single-input file (FP32, FP16 or INT8 Q/DQ with --modality)")
    write_text(out / "README.md", _readme(written, batch, _contract(written[0].onnx)[0]))
    return written


def _readme(files: list[DeepStreamFiles], batch: int, contract: InputContract) -> str:
    rows = "\n".join(f"| {f.modality} | {f.precision} | `{f.onnx.name}` | `{f.tracker.name}` | `{f.nvinfer.name}` |"
                     for f in files)
    return f"""# admpff in DeepStream

Generated by `admpff-export --modality ... --deepstream`. Nothing here was run on DeepStream by admpff's
CI; the keys follow DeepStream 9.2's documentation (Gst-nvtracker ReID table, Gst-nvinfer config keys).

| modality | precision | model | tracker config | nvinfer SGIE config |
| --- | --- | --- | --- | --- |
{rows}

Each model takes one input, `images` (float32 NCHW 3x{contract.height}x{contract.width} RGB 0..255; normalisation is inside the
graph), so the configs use offsets 0, scale factor 1, RGB, no aspect-ratio padding. One file per modality:
the tracker and nvinfer feed one tensor, so a visible camera and an infrared camera each get their own
file (a DeepStream pipeline per camera type, or per-source `sub-batches` with their own tracker config).
DeepStream builds each engine from the ONNX on first run when the engine file is absent (batch {batch});
nvinfer saves it under its own `<onnx>_b<batch>_gpu0_<mode>.engine` name, which the SGIE config already
points at, so later starts reuse it. Engines are tied to the device and TensorRT version: delete the
`.engine` files after a JetPack upgrade.

## Option A: re-ID inside the tracker (Gst-nvtracker)

```
[tracker]
enable=1
tracker-width=960
tracker-height=544
ll-lib-file=/opt/nvidia/deepstream/deepstream/lib/libnvds_nvmultiobjecttracker.so
ll-config-file=config_tracker_<file>.yml
```

`reidType: 1` uses the embedding for association (NvDeepSORT); for NvDCF copy the `ReID:` section into
NVIDIA's `config_tracker_NvDCF_accuracy.yml` and set `reidType: 2`. `outputReidTensor: 1` puts each
object's embedding into the tracker's batch user meta (`NvDsReidTensorBatch`, {contract.embedding_dim} floats).
If your DeepStream does not resolve the tracker's paths relative to the config file, run the app from
this folder or make `onnxFile`/`modelEngineFile` absolute.

## Option B: embeddings as object meta (Gst-nvinfer secondary GIE)

```
[secondary-gie0]
enable=1
gie-unique-id=2
operate-on-gie-id=1
config-file=config_sgie_<file>.txt
```

`output-tensor-meta=1` attaches an `NvDsInferTensorMeta` (`NVDSINFER_TENSOR_OUTPUT_META`) with the
`embedding` output to each person object; read it in a pad probe after the SGIE. Set `operate-on-class-ids`
to your detector's person class.

## JetPack versions

| JetPack | DeepStream | TensorRT | notes |
| --- | --- | --- | --- |
| 5.1.x (Xavier, Orin) | 6.2 / 6.3 | 8.5.2 | ONNX opset <= 17 (admpff's default); INT8 Q/DQ needs `networkMode: 2` / `network-mode=1`; FP16 file: FP16 mode |
| 6.0 / 6.1 / 6.2 (Orin) | 7.0 / 7.1 | 8.6.2 / 10.3 | same files; engines built there do not run on JetPack 5 |
| 7.x (Thor; Orin from 7.2) | 8.0 or newer | 10.13+ (11.x on 7.2.2+) | TensorRT 11 takes precision only from the file (Q/DQ, FP16 tensors): the mode keys then only name the file's precision |

Use `deepstream-app -c <app config>` with the tracker and/or SGIE groups above; `admpff-reid` is not needed
on the device for this path. Galleries built with admpff's Python runtime stay comparable as long as the
same single-input file (same checkpoint) runs on both sides.
"""
