"""admpff-export --deepstream: DeepStream cannot run here, so the files are parsed and every value is checked
against the model's contract and every key against the keys DeepStream 9.2's documentation lists."""
import configparser

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from _serving_export import real_crops, serving_export
from admpff.export.deepstream import (NVINFER_KEYS, NVINFER_NETWORK_MODE, TRACKER_NETWORK_MODE, TRACKER_OTHER_KEYS,
                                      TRACKER_REID_KEYS)
from admpff.export.onnx_export import read_metadata
from admpff.runtime.contract import ModelInfo
from admpff.runtime.embedder import load_embedder

FILES = {  # stem -> (precision, modality)
    "m.visible": ("fp32", "visible"), "m.infrared": ("fp32", "infrared"),
    "m.visible.int8": ("int8-qdq", "visible"), "m.infrared.int8": ("int8-qdq", "infrared"),
}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return serving_export(tmp_path_factory.getbasetemp() / "serving-export")


def _tracker(path):
    text = path.read_text()
    first, rest = text.split("\n", 1)
    assert first == "%YAML:1.0"  # the OpenCV-style header NvMultiObjectTracker configs start with
    return yaml.safe_load(rest)


def _nvinfer(path):
    parser = configparser.ConfigParser()
    parser.read_string(path.read_text())
    assert parser.sections() == ["property"]
    return dict(parser["property"])


def test_only_tensorrt_ready_single_input_files_get_configs(exported):
    trackers = {p.name for p in exported.deepstream.glob("config_tracker_*.yml")}
    singles = {p.name[:-len(".onnx")] for p in exported.out.glob("m.visible*.onnx")} | \
              {p.name[:-len(".onnx")] for p in exported.out.glob("m.infrared*.onnx")}
    assert set(FILES) <= singles
    # every TensorRT-ready single-input file, and neither CPU-INT8 nor a two-input file
    assert trackers == {f"config_tracker_{s}.yml" for s in singles if not s.endswith("cpu-int8")}


@pytest.mark.parametrize("stem", sorted(FILES))
def test_tracker_reid_section_matches_the_model(exported, stem):
    precision, modality = FILES[stem]
    cfg = _tracker(exported.deepstream / f"config_tracker_{stem}.yml")
    for section, keys in TRACKER_OTHER_KEYS.items():
        assert set(cfg.get(section, {})) <= keys, section
    assert set(cfg) <= set(TRACKER_OTHER_KEYS) | {"ReID"}
    reid = cfg["ReID"]
    assert set(reid) <= TRACKER_REID_KEYS
    onnx_path = exported.deepstream / reid["onnxFile"]
    model = onnx.load(str(onnx_path))
    meta = read_metadata(model)
    contract = ModelInfo.from_metadata(meta).contract
    assert meta["admpff.fixed_modality"] == modality
    assert [i.name for i in model.graph.input] == ["images"]  # the tracker feeds one tensor
    assert reid["reidFeatureSize"] == contract.embedding_dim
    assert reid["inferDims"] == [3, contract.height, contract.width]
    assert reid["networkMode"] == TRACKER_NETWORK_MODE[precision] == {"fp32": 0, "int8-qdq": 2}[precision]
    assert reid["colorFormat"] == 0 and contract.channel_order == "RGB"
    assert reid["inputOrder"] == 0 and contract.layout == "NCHW"
    # normalisation is inside the graph: DeepStream's y = netScaleFactor * (x - offsets) must be the identity
    assert reid["offsets"] == [0.0, 0.0, 0.0] and reid["netScaleFactor"] == 1.0 and contract.normalization_in_graph
    assert reid["keepAspc"] == 0
    assert reid["batchSize"] == 32 and reid["outputReidTensor"] == 1
    assert reid["modelEngineFile"].endswith(".engine") and reid["modelEngineFile"] != reid["onnxFile"]


@pytest.mark.parametrize("stem", sorted(FILES))
def test_nvinfer_sgie_attaches_the_embedding_as_tensor_meta(exported, stem):
    precision, _ = FILES[stem]
    cfg = _nvinfer(exported.deepstream / f"config_sgie_{stem}.txt")
    assert set(cfg) <= NVINFER_KEYS
    meta = read_metadata(onnx.load(str(exported.deepstream / cfg["onnx-file"])))
    contract = ModelInfo.from_metadata(meta).contract
    assert cfg["output-tensor-meta"] == "1" and cfg["process-mode"] == "2" and cfg["network-type"] == "100"
    assert int(cfg["network-mode"]) == NVINFER_NETWORK_MODE[precision] == {"fp32": 0, "int8-qdq": 1}[precision]
    assert cfg["infer-dims"] == f"3;{contract.height};{contract.width}"
    assert cfg["output-blob-names"] == contract.output_name
    assert [float(v) for v in cfg["offsets"].split(";")] == [0.0, 0.0, 0.0] and float(cfg["net-scale-factor"]) == 1.0
    assert cfg["model-color-format"] == "0" and cfg["maintain-aspect-ratio"] == "0"
    assert int(cfg["batch-size"]) == 32


def test_deepstream_preprocessing_reproduces_the_runtime(exported):
    """What the configs tell DeepStream to do to a crop (stretch to infer dims, RGB planar, then
    netScaleFactor*(x - offsets)) fed to the single-input file gives the runtime's embedding."""
    import cv2

    reid = _tracker(exported.deepstream / "config_tracker_m.visible.yml")["ReID"]
    _, h, w = reid["inferDims"]
    crops = real_crops(3, seed=7)
    planes = []
    for crop in crops:
        resized = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
        rgb = resized[:, :, ::-1] if reid["colorFormat"] == 0 else resized
        x = rgb.transpose(2, 0, 1).astype(np.float32)
        planes.append(reid["netScaleFactor"] * (x - np.asarray(reid["offsets"], np.float32).reshape(3, 1, 1)))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(exported.deepstream / reid["onnxFile"]), so, providers=["CPUExecutionProvider"])
    deepstream = sess.run(["embedding"], {"images": np.stack(planes)})[0]
    runtime = load_embedder(exported.deepstream / reid["onnxFile"], backend="onnxruntime").embed(crops, "visible")
    assert np.abs(deepstream / np.linalg.norm(deepstream, axis=1, keepdims=True) - runtime).max() <= 1e-5


def test_readme_covers_jetpack_5_6_7_and_both_wirings(exported):
    text = (exported.deepstream / "README.md").read_text()
    for needle in ("JetPack", "5.1", "6.", "7.", "ll-config-file", "output-tensor-meta=1", "[secondary-gie0]"):
        assert needle in text
    for stem in FILES:
        assert f"config_tracker_{stem}.yml" in text
