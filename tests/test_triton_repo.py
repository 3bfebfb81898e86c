"""admpff-export --triton: every config parses with Triton's ModelConfig schema (tritonclient) and agrees
with the model file's contract; models are placed where Triton looks for them."""
import json

import onnx
import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the serve extra) ships Triton's ModelConfig schema")

from _serving_export import serving_export  # noqa: E402
from admpff.export.onnx_export import read_metadata  # noqa: E402
from admpff.export.triton_repo import triton_model_name, write_tensorrt_plan_model  # noqa: E402
from admpff.runtime.contract import DEFAULT_CONTRACT, ModelInfo  # noqa: E402
from admpff.runtime.triton_config import TritonModelSpec, model_config_text, validate_config_text  # noqa: E402

EXPECTED = {  # model folder -> (source file suffix, backend or platform, instance kind, two inputs?)
    "m": (".onnx", "onnxruntime", "KIND_AUTO", True),
    "m_int8": (".int8.onnx", "onnxruntime", "KIND_AUTO", True),
    "m_cpu-int8": (".cpu-int8.onnx", "onnxruntime", "KIND_CPU", True),
    "m_visible": (".visible.onnx", "onnxruntime", "KIND_AUTO", False),
    "m_infrared_int8": (".infrared.int8.onnx", "onnxruntime", "KIND_AUTO", False),
    "m_trt": (".onnx", "tensorrt_plan", "KIND_GPU", True),
    "m_visible_int8_trt": (".visible.int8.onnx", "tensorrt_plan", "KIND_GPU", False),
}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return serving_export(tmp_path_factory.getbasetemp() / "serving-export")


def test_repository_has_a_model_per_file_and_no_plan_for_cpu_int8(exported):
    names = {p.name for p in exported.repo.iterdir()}
    assert set(EXPECTED) <= names
    assert "m_cpu-int8_trt" not in names  # TensorRT cannot run the CPU-INT8 file


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_config_parses_and_matches_the_files_contract(exported, folder):
    suffix, kind, instance_kind, two_inputs = EXPECTED[folder]
    text = (exported.repo / folder / "config.pbtxt").read_text()
    cfg = validate_config_text(text, folder)
    source = exported.file(suffix)
    meta = read_metadata(onnx.load(str(source)))
    contract = ModelInfo.from_metadata(meta).contract
    assert cfg["name"] == folder
    assert (cfg.get("backend") if kind == "onnxruntime" else cfg.get("platform")) == kind
    assert int(cfg["max_batch_size"]) == 32
    assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) == 500
    assert [g.get("kind", "KIND_AUTO") for g in cfg["instance_group"]] == [instance_kind]  # 0 = default, omitted
    inputs = {i["name"]: i for i in cfg["input"]}
    assert [int(d) for d in inputs["images"]["dims"]] == [3, contract.height, contract.width]
    assert inputs["images"]["data_type"] == "TYPE_FP32"
    if two_inputs:
        # per-sample modality: dims [1] (Triton needs rank >= 1) reshaped to the model's [batch]
        assert inputs["modality"]["data_type"] == "TYPE_INT32" and inputs["modality"]["dims"] == ["1"]
        assert "reshape" in inputs["modality"] and not inputs["modality"]["reshape"].get("shape")
    else:
        assert set(inputs) == {"images"}
    (out,) = cfg["output"]
    assert out["name"] == "embedding" and [int(d) for d in out["dims"]] == [contract.embedding_dim]
    params = {k: v.get("string_value", "") for k, v in cfg["parameters"].items()}  # "" is omitted
    assert ModelInfo.from_metadata(params).contract == contract
    assert params.get("admpff.fixed_modality") == meta.get("admpff.fixed_modality")
    if kind == "onnxruntime":
        assert (exported.repo / folder / "1" / "model.onnx").read_bytes() == source.read_bytes()
    else:  # no engine here: the folder says how to build one on the serving GPU
        assert not (exported.repo / folder / "1" / "model.plan").exists()
        assert "--batch 1,8,32" in (exported.repo / folder / "1" / "BUILD.md").read_text()


def test_tensorrt_plan_model_places_a_given_engine(exported, tmp_path):
    engine = tmp_path / "m.int8.engine"
    engine.write_bytes(b"serialized engine bytes")
    model = write_tensorrt_plan_model(tmp_path / "repo", exported.file(".int8.onnx"), engine, max_batch=16)
    assert model.loadable and model.validated and model.name == "m_int8_trt"
    assert (model.folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert not (model.folder / "1" / "BUILD.md").exists()
    cfg = validate_config_text((model.folder / "config.pbtxt").read_text())
    assert int(cfg["max_batch_size"]) == 16
    assert cfg["parameters"]["admpff.engine_profile"]["string_value"] == "1,16,16"


def test_contract_with_quotes_and_backslashes_survives_the_text_format():
    params = {"admpff.contract": DEFAULT_CONTRACT.to_json(), "admpff.note": 'a "quoted" \\ path\nline'}
    cfg = validate_config_text(model_config_text(TritonModelSpec("x", DEFAULT_CONTRACT, backend="python",
                                                                 parameters=params)))
    got = {k: v.get("string_value", "") for k, v in cfg["parameters"].items()}
    assert got == params and json.loads(got["admpff.contract"])["height"] == 288


def test_bad_configs_and_specs_are_refused():
    with pytest.raises(ValueError, match="does not parse"):
        validate_config_text('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(ValueError, match="rank >= 1"):
        validate_config_text('name: "x"\nmax_batch_size: 4\ninput [ { name: "images" data_type: TYPE_FP32 } ]\n')
    for bad in ({"max_batch_size": 0}, {"queue_delay_us": -1}, {"instance_kind": "KIND_TPU"},
                {"preferred_batch_sizes": [64]}):
        with pytest.raises(ValueError):
            TritonModelSpec("x", DEFAULT_CONTRACT, backend="python", **bad)


def test_model_names():
    assert triton_model_name("admpff.visible.int8.onnx") == "admpff_visible_int8"
    assert triton_model_name("admpff.cpu-int8.onnx") == "admpff_cpu-int8"
