"""admpff-build-engine: the version-aware plan (pure), the sidecar, and the CLI without TensorRT."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from admpff.export.engine_builder import (BuildPlanError, build_engine_from_onnx, model_base_name, parse_batch,
                                          parse_trt_version, plan_build, read_onnx_info, EngineBuildError)
from admpff.runtime.contract import DEFAULT_CONTRACT, build_metadata
from admpff.runtime.engine_sidecar import (EngineMismatchError, EngineSidecar, SidecarError, check_compatible,
                                           read_sidecar, rebuild_command, sidecar_path, write_sidecar)

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False

VERSIONS = ["8.5.2", "8.6.2", "10.3.0", "10.8.0", "10.13.0", "11.4.1"]


EXPORT_OPSET = 17  # admpff-export's default (--opset): TensorRT 8.5/8.6 (JetPack 5/6.0) parse up to 17


def make_admpff_onnx(path, precision="fp32", tensorrt_compatible=True, static_batch=None, metadata=True):
    """A tiny graph with the admpff I/O names and metadata, in the export's opset and form (opset 17:
    ReduceMean takes its axes as an attribute; opset 18's axes input would not parse on TensorRT 8.5/8.6)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    c = DEFAULT_CONTRACT
    batch = static_batch if static_batch is not None else "batch"
    w = numpy_helper.from_array(np.ones((3, c.embedding_dim), np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["embedding"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, c.height, c.width]),
         helper.make_tensor_value_info("modality", TensorProto.INT32, [batch])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, c.embedding_dim])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", EXPORT_OPSET)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, build_metadata(c, precision=precision, checkpoint_sha256="ab" * 32,
                                                     tensorrt_compatible=tensorrt_compatible))
    onnx.save(model, path)
    return path


# -- plan_build: version x precision table ------------------------------------------------------------
def test_gpu_fixture_uses_the_exports_opset_and_runs(tmp_path):
    import onnx
    from admpff.export.cli import build_parser
    from admpff.runtime.embedder import load_embedder

    assert build_parser().get_default("opset") == EXPORT_OPSET
    model = onnx.load(str(make_admpff_onnx(tmp_path / "m.onnx")))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [EXPORT_OPSET]
    out = load_embedder(tmp_path / "m.onnx").embed_batch(np.ones((2, 3, 288, 144), np.float32), np.zeros(2, np.int32))
    assert out.shape == (2, DEFAULT_CONTRACT.embedding_dim)


def test_parse_trt_version():
    assert parse_trt_version("10.3.0.30") == (10, 3, 0)
    assert parse_trt_version("8.5.2.2") == (8, 5, 2)
    assert parse_trt_version("11.4") == (11, 4, 0)
    with pytest.raises(BuildPlanError):
        parse_trt_version("garbage")


@pytest.mark.parametrize("version, strongly_typed, flags, network_flags", [
    ("8.5.2", False, [], ["EXPLICIT_BATCH"]),
    ("8.6.2", False, [], ["EXPLICIT_BATCH"]),
    ("10.3.0", False, [], []),
    ("10.8.0", False, [], []),
    ("10.13.0", False, [], []),
    ("11.4.1", True, [], []),
])
def test_fp32_file_auto(version, strongly_typed, flags, network_flags):
    plan = plan_build(version, "fp32", "auto", None, "1,8,32")
    assert plan.precision == "fp32" and plan.expected_onnx == "fp32"
    assert plan.strongly_typed is strongly_typed
    assert plan.builder_flags == flags and plan.network_flags == network_flags
    assert plan.explicit_batch is version.startswith("8.")
    assert plan.batch == (1, 8, 32) and plan.warnings == []


@pytest.mark.parametrize("version, warns", [("8.5.2", False), ("8.6.2", False), ("10.3.0", False),
                                            ("10.8.0", False), ("10.13.0", True)])
def test_fp32_file_fp16_request_uses_the_fp16_flag_before_11(version, warns):
    plan = plan_build(version, "fp32", "fp16", None, None)
    assert plan.precision == "fp16" and plan.builder_flags == ["FP16"] and not plan.strongly_typed
    assert any("deprecated since 10.12" in w for w in plan.warnings) is warns


def test_fp32_file_fp16_request_on_11_tells_to_export_fp16():
    with pytest.raises(BuildPlanError, match=r"admpff-export --fp16.*reid\.fp16\.onnx"):
        plan_build("11.4.1", "fp32", "fp16", None, None, onnx_name="out/reid.onnx")


@pytest.mark.parametrize("version", ["8.5.2", "8.6.2"])
def test_fp16_file_on_8x_is_refused(version):
    with pytest.raises(BuildPlanError, match=r"no strongly typed.*reid\.onnx with --precision fp16"):
        plan_build(version, "fp16", "auto", None, None, onnx_name="reid.fp16.onnx")


@pytest.mark.parametrize("version", ["10.3.0", "10.8.0", "10.13.0", "11.4.1"])
def test_fp16_file_builds_strongly_typed_without_flags(version):
    plan = plan_build(version, "fp16", "auto", None, None)
    assert plan.precision == "fp16" and plan.strongly_typed and plan.builder_flags == []
    assert plan.network_flags == ([] if version.startswith("11") else ["STRONGLY_TYPED"])


@pytest.mark.parametrize("version, strongly_typed, flags", [
    ("8.5.2", False, ["INT8", "FP16"]),
    ("8.6.2", False, ["INT8", "FP16"]),
    ("10.3.0", False, ["INT8", "FP16"]),
    ("10.8.0", True, []),
    ("10.13.0", True, []),
    ("11.4.1", True, []),
])
def test_qdq_file(version, strongly_typed, flags):
    plan = plan_build(version, "int8-qdq", "auto", None, None)
    assert plan.precision == "int8" and plan.expected_onnx == "int8-qdq"
    assert plan.strongly_typed is strongly_typed and plan.builder_flags == flags
    assert plan.explicit_batch is version.startswith("8.")
    assert plan_build(version, "int8-qdq", "int8", None, None).precision == "int8"


@pytest.mark.parametrize("version", VERSIONS)
def test_cpu_int8_variant_is_refused_everywhere(version):
    with pytest.raises(BuildPlanError, match=r"ONNX Runtime CPU variant.*use reid\.int8\.onnx"):
        plan_build(version, "int8-cpu", "auto", None, None, onnx_name="reid.int8-cpu.onnx")
    with pytest.raises(BuildPlanError, match="ONNX Runtime CPU variant"):
        plan_build(version, "fp32", "auto", None, None, tensorrt_compatible=False)


@pytest.mark.parametrize("version", VERSIONS)
def test_mismatched_requests_are_refused(version):
    with pytest.raises(BuildPlanError, match="admpff-export --int8"):
        plan_build(version, "fp32", "int8", None, None)
    with pytest.raises(BuildPlanError, match="always builds INT8"):
        plan_build(version, "int8-qdq", "fp16", None, None)
    with pytest.raises(BuildPlanError, match="--precision"):
        plan_build(version, "fp32", "bf16", None, None)


def test_unsupported_versions():
    with pytest.raises(BuildPlanError, match="too old"):
        plan_build("8.4.3", "fp32", "auto", None, None)
    with pytest.raises(BuildPlanError, match="too old"):
        plan_build("7.1.3", "fp32", "auto", None, None)
    with pytest.raises(BuildPlanError, match="not supported"):
        plan_build("9.2.0", "fp32", "auto", None, None)


# -- DLA ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, onnx_precision, requested, flags, strongly_typed", [
    ("8.5.2", "fp32", "fp16", ["FP16", "GPU_FALLBACK"], False),
    ("8.5.2", "int8-qdq", "auto", ["INT8", "FP16", "GPU_FALLBACK"], False),
    ("10.3.0", "fp32", "fp16", ["FP16", "GPU_FALLBACK"], False),
    ("10.3.0", "int8-qdq", "auto", ["INT8", "FP16", "GPU_FALLBACK"], False),
    ("11.4.1", "fp16", "auto", ["GPU_FALLBACK"], True),
    ("11.4.1", "int8-qdq", "auto", ["GPU_FALLBACK"], True),
])
def test_dla_plans(version, onnx_precision, requested, flags, strongly_typed):
    plan = plan_build(version, onnx_precision, requested, 0, "4")
    assert plan.dla_core == 0 and plan.batch == (4, 4, 4)
    assert plan.builder_flags == flags and plan.strongly_typed is strongly_typed
    assert any("GPU_FALLBACK" in w for w in plan.warnings)


@pytest.mark.parametrize("version", ["8.5.2", "10.3.0", "11.4.1"])
def test_dla_refuses_fp32_and_dynamic_shapes(version):
    with pytest.raises(BuildPlanError, match="DLA runs FP16 or INT8 only"):
        plan_build(version, "fp32", "auto", 0, "8")
    onnx_precision = "fp16" if version.startswith("11") else "fp32"
    with pytest.raises(BuildPlanError, match=r"static batch.*--batch 8"):
        plan_build(version, onnx_precision, "fp16", 1, "1,8,32")


def test_dla_default_batch_is_static_and_core_must_be_valid():
    assert plan_build("10.3.0", "fp32", "fp16", 1, None).batch == (8, 8, 8)
    with pytest.raises(BuildPlanError, match="DLA core"):
        plan_build("10.3.0", "fp32", "fp16", -1, "8")


def test_dla_fp16_file_before_11_uses_the_fp32_file():
    with pytest.raises(BuildPlanError, match=r"reid\.onnx with --precision fp16"):
        plan_build("10.13.0", "fp16", "auto", 0, "8", onnx_name="reid.fp16.onnx")


# -- helpers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [(None, (1, 8, 32)), ("1,8,32", (1, 8, 32)), ("16", (16, 16, 16)),
                                            (" 2, 4 ,8", (2, 4, 8)), ((1, 2, 3), (1, 2, 3))])
def test_parse_batch(text, expected):
    assert parse_batch(text) == expected


@pytest.mark.parametrize("text", ["a,b,c", "1,2", "8,4,2", "0,1,2", "1,2,3,4", ""])
def test_parse_batch_rejects(text):
    with pytest.raises(BuildPlanError, match="--batch"):
        parse_batch(text)


def test_model_base_name():
    assert model_base_name("dir/reid.int8-cpu.onnx") == "reid"
    assert model_base_name("reid.fp16.onnx") == "reid"
    assert model_base_name("reid.int8.onnx") == "reid"
    assert model_base_name("admpff_r50.onnx") == "admpff_r50"


# -- sidecar -----------------------------------------------------------------------------------------
def _sidecar(**kw):
    base = dict(tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7", precision="fp16",
                onnx_precision="fp32", batch=(1, 8, 32), onnx_sha256="c" * 64,
                metadata=build_metadata(DEFAULT_CONTRACT, precision="fp32", checkpoint_sha256="ab" * 32),
                onnx_path="models/reid.onnx", requested_precision="fp16", builder_flags=["FP16"])
    base.update(kw)
    return EngineSidecar(**base)


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "reid.engine"
    engine.write_bytes(b"plan")
    sc = _sidecar(dla_core=0, batch=(8, 8, 8))
    path = write_sidecar(engine, sc)
    assert path == sidecar_path(engine) == tmp_path / "reid.engine.json"
    back = read_sidecar(engine)
    assert back == sc
    assert back.model_info().contract == DEFAULT_CONTRACT and back.model_info().precision == "fp16"
    assert json.loads(path.read_text())["batch"] == [8, 8, 8]
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_sidecar_missing_and_corrupt(tmp_path):
    engine = tmp_path / "reid.engine"
    with pytest.raises(SidecarError, match="no sidecar reid.engine.json"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(SidecarError, match="not valid JSON"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps({"format": 1, "gpu_name": "x"}))
    with pytest.raises(SidecarError, match="lacks"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps({**_sidecar().to_dict(), "format": 99}))
    with pytest.raises(SidecarError, match="format 99"):
        read_sidecar(engine)


def test_sidecar_compatible():
    check_compatible(_sidecar(), "10.3.0.26", "Orin", "8.7")          # build number may differ
    check_compatible(_sidecar(), "10.3.0", " orin ", (8, 7), expected_onnx_sha="c" * 64)


@pytest.mark.parametrize("args, kwargs, words", [
    (("10.8.0", "Orin", "8.7"), {}, ["TensorRT 10.3.0.30 built it", "TensorRT 10.8.0"]),
    (("10.3.0", "NVIDIA GeForce RTX 4090", "8.9"), {}, ["compute capability 8.7 (Orin)", "8.9"]),
    (("10.3.0", "NVIDIA GeForce RTX 3080", "8.7"), {}, ["built on a Orin", "RTX 3080"]),
    (("10.3.0", "Orin", "8.7"), {"expected_onnx_sha": "d" * 64}, ["sha256 cccccccccccc", "dddddddddddd"]),
])
def test_sidecar_mismatch_names_the_difference_and_the_rebuild_command(args, kwargs, words):
    with pytest.raises(EngineMismatchError) as err:
        check_compatible(_sidecar(), *args, engine_path="models/reid.engine", **kwargs)
    msg = str(err.value)
    for w in words:
        assert w in msg, msg
    assert ("admpff-build-engine models/reid.onnx --out models/reid.engine --batch 1,8,32 --precision fp16"
            in msg), msg
    assert "\n" not in msg


def test_rebuild_command_dla():
    cmd = rebuild_command(_sidecar(dla_core=1, batch=(8, 8, 8), requested_precision="auto", workspace_gb=4.0),
                          "a b.engine")
    assert cmd == "admpff-build-engine models/reid.onnx --out 'a b.engine' --batch 8,8,8 --dla 1 --workspace 4"


# -- reading the ONNX --------------------------------------------------------------------------------
def test_read_onnx_info(tmp_path):
    path = make_admpff_onnx(tmp_path / "reid.int8.onnx", precision="int8-qdq")
    info = read_onnx_info(path)
    assert info.precision == "int8-qdq" and info.tensorrt_compatible
    assert info.input_names == ("images", "modality") and info.image_shape == (288, 144)
    assert info.static_batch is None and len(info.sha256) == 64
    assert "admpff.contract" in info.metadata


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, "ONNX file not found"),
    (lambda p: p.write_bytes(b"\x00garbage\xff" * 10), "not a readable ONNX"),
    (lambda p: make_admpff_onnx(p, metadata=False), "no admpff contract"),
])
def test_read_onnx_info_errors(tmp_path, setup, match):
    path = tmp_path / "m.onnx"
    setup(path)
    with pytest.raises(EngineBuildError, match=match):
        read_onnx_info(path)


@pytest.mark.skipif(HAVE_TRT, reason="checks the pre-TensorRT validation order on a machine without TensorRT")
def test_checks_before_tensorrt(tmp_path):
    cpu = make_admpff_onnx(tmp_path / "reid.int8-cpu.onnx", precision="int8-cpu", tensorrt_compatible=False)
    with pytest.raises(BuildPlanError, match=r"use reid\.int8\.onnx"):
        build_engine_from_onnx(cpu, tmp_path / "x.engine")
    static = make_admpff_onnx(tmp_path / "static.onnx", static_batch=4)
    with pytest.raises(BuildPlanError, match="fixed batch of 4"):
        build_engine_from_onnx(static, tmp_path / "x.engine", batch="1,4,8")


# -- the CLI, as a subprocess ------------------------------------------------------------------------
def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "admpff.export.engine_builder", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the no-TensorRT message cannot be shown")
def test_cli_without_tensorrt_prints_one_line_and_exits_2(tmp_path):
    onnx_path = make_admpff_onnx(tmp_path / "reid.onnx")
    rc, lines = _cli(onnx_path, "--out", tmp_path / "reid.engine")
    assert rc == 2
    assert lines == ["TensorRT is not installed here: run admpff-build-engine on the target device "
                     "(Jetson: JetPack's python3-libnvinfer; desktop: pip install tensorrt)"]
    assert not (tmp_path / "reid.engine").exists()


@pytest.mark.parametrize("make, extra, match", [
    (None, [], "ONNX file not found"),
    ("garbage", [], "not a readable ONNX"),
    ("nometa", [], "no admpff contract"),
    ("ok", ["--batch", "8,x,2"], "--batch"),
    ("ok", ["--batch", "8,4,2"], "MIN <= OPT <= MAX"),
    ("ok", ["--precision", "int4"], "invalid choice"),
    ("cpu", [], "ONNX Runtime CPU variant"),
])
def test_cli_errors_are_one_line(tmp_path, make, extra, match):
    path = tmp_path / "reid.onnx"
    if make == "garbage":
        path.write_bytes(b"\x08\x01garbage" * 50)
    elif make == "nometa":
        make_admpff_onnx(path, metadata=False)
    elif make == "ok":
        make_admpff_onnx(path)
    elif make == "cpu":
        make_admpff_onnx(path, precision="int8-cpu", tensorrt_compatible=False)
    rc, lines = _cli(path, "--out", tmp_path / "reid.engine", *extra)
    assert rc == 2, lines
    assert len(lines) == 1 and match in lines[0], lines
    assert "Traceback" not in lines[0]


def test_cli_help_works_without_tensorrt_and_shows_every_default():
    rc, lines = _cli("--help")
    assert rc == 0 and any("--timing-cache" in line for line in lines)
    text = " ".join(" ".join(lines).split())
    for shown in ("CUDA device index (default: 0)", "(default: 2.0)", "(default: auto)"):
        assert shown in text, shown


@pytest.mark.parametrize("out", ["folder", "under-a-file"])
def test_cli_out_is_checked_before_any_work(tmp_path, out):
    onnx_path = make_admpff_onnx(tmp_path / "reid.onnx")
    (tmp_path / "file").write_text("x")
    target = tmp_path if out == "folder" else tmp_path / "file" / "reid.engine"
    rc, lines = _cli(onnx_path, "--out", target)  # without TensorRT this would otherwise say "not installed"
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("admpff-build-engine: error: --out"), lines


# -- needs TensorRT and a GPU ------------------------------------------------------------------------
def test_build_engine_end_to_end(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (build engines on the target device)")
    onnx_path = make_admpff_onnx(tmp_path / "reid.onnx")
    sidecar = build_engine_from_onnx(onnx_path, tmp_path / "reid.engine", batch="1,2,4",
                                     timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "reid.engine").stat().st_size > 0 and (tmp_path / "timing.cache").is_file()
    assert read_sidecar(tmp_path / "reid.engine") == sidecar and sidecar.batch == (1, 2, 4)
