"""The OpenVINO embedder on a tiny real model: parity with ONNX Runtime, precisions, threads, dynamic batch,
the contract from rt_info for ONNX and IR, and one-line errors for files and precisions it cannot run."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from _tiny_model import build_tiny_embedder
from admpff.runtime.bench import make_inputs
from admpff.runtime.embedder import ModelLoadError, backends, load_embedder

pytestmark = pytest.mark.skipif(not backends()["openvino"].installed(), reason="openvino is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_embedder(tmp_path_factory.mktemp("ov") / "tiny.onnx", checkpoint_sha256="c0ffee")


@pytest.fixture(scope="module")
def reference(tiny):
    return load_embedder(tiny, backend="onnxruntime")


def _crops(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(80, 200)), int(rng.integers(40, 90)), 3), dtype=np.uint8)
            for _ in range(n)]


def test_f32_matches_onnx_runtime_and_reads_the_contract(tiny, reference):
    from admpff.runtime.openvino_backend import OpenVINOEmbedder

    emb = load_embedder(tiny, backend="openvino", precision="f32", threads=1)
    assert isinstance(emb, OpenVINOEmbedder)
    assert emb.inference_precision == "f32" and emb.threads == 1
    assert emb.info.checkpoint_sha256 == "c0ffee" and emb.contract == reference.contract
    crops = _crops(6)
    modalities = ["visible", "infrared"] * 3
    np.testing.assert_allclose(emb.embed(crops, modalities), reference.embed(crops, modalities), atol=1e-5)
    assert "openvino[CPU f32, 1 threads]" in emb.describe()


def test_cpu_default_precision_stays_close(tiny, reference):
    emb = load_embedder(tiny, backend="openvino", precision="default")  # the plugin's own choice
    assert emb.inference_precision in ("f32", "bf16", "f16")
    crops = _crops(8, seed=1)
    cos = np.sum(emb.embed(crops, "visible") * reference.embed(crops, "visible"), axis=1)
    assert cos.min() > 0.999


def test_auto_precision_is_bf16_only_with_amx(tiny, monkeypatch):
    from admpff.runtime import openvino_backend

    plugin_default = load_embedder(tiny, backend="openvino", precision="default").inference_precision
    monkeypatch.setattr(openvino_backend, "cpu_has_amx", lambda: False)
    assert load_embedder(tiny, backend="openvino").inference_precision == "f32"
    monkeypatch.setattr(openvino_backend, "cpu_has_amx", lambda: True)
    assert load_embedder(tiny, backend="openvino").inference_precision == plugin_default
    assert openvino_backend.resolve_precision("auto", "GPU") is None


def test_dynamic_batch_rows_do_not_depend_on_the_batch(tiny):
    emb = load_embedder(tiny, backend="openvino", precision="f32")
    images, modality = make_inputs(emb.contract, 9, seed=3)
    full = emb.embed_batch(images, modality)
    for n in (1, 3):
        np.testing.assert_allclose(emb.embed_batch(images[:n], modality[:n]), full[:n], atol=1e-5)
    assert emb.max_batch is None


def test_fixed_batch_file_is_made_dynamic(tiny, tmp_path):
    import onnx

    model = onnx.load(str(tiny))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    emb = load_embedder(fixed, backend="openvino", precision="f32")
    images, modality = make_inputs(emb.contract, 7)
    assert emb.embed_batch(images, modality).shape == (7, emb.dim) and emb.max_batch is None


def test_ir_round_trip_keeps_the_contract(tiny, tmp_path, reference):
    from admpff.runtime.openvino_backend import save_ir

    xml = save_ir(tiny, tmp_path / "ir" / "tiny.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert not [p for p in xml.parent.iterdir() if p.name.startswith(".")]  # no scratch left behind
    emb = load_embedder(xml, precision="f32")  # .xml -> OpenVINO by suffix
    assert type(emb).__name__ == "OpenVINOEmbedder" and emb.info.checkpoint_sha256 == "c0ffee"
    crops = _crops(3, seed=2)
    np.testing.assert_allclose(emb.embed(crops, "infrared"), reference.embed(crops, "infrared"), atol=1e-5)
    xml.with_suffix(".bin").unlink()
    with pytest.raises(ModelLoadError, match=r"its weights file tiny\.bin is missing"):
        load_embedder(xml)


def test_file_without_admpff_metadata(tmp_path, tiny):
    import onnx

    model = onnx.load(str(tiny))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelLoadError, match="carries no admpff contract"):
        load_embedder(bare, backend="openvino")


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_embedder(tmp_path / "none.onnx", backend="openvino")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00 not a model")
    with pytest.raises(ModelLoadError) as err:
        load_embedder(bad, backend="openvino")
    assert str(err.value).startswith("cannot load bad.onnx: OpenVINO cannot read it") and "\n" not in str(err.value)
    # the native ONNX reader's own log lines stay off the terminal: only the one error line is printed
    code = ("import sys; from admpff.runtime.embedder import load_embedder, ModelLoadError\n"
            f"try:\n    load_embedder({str(bad)!r}, backend='openvino')\n"
            "except ModelLoadError as e:\n    print(e, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("cannot load bad.onnx"), p.stderr


def test_precisions_and_devices(tiny, monkeypatch):
    from admpff.runtime import openvino_backend

    with pytest.raises(ModelLoadError, match="unknown OpenVINO precision 'int4'; choose from auto, default, f32, bf16, f16"):
        load_embedder(tiny, backend="openvino", precision="int4")
    with pytest.raises(ModelLoadError, match="OpenVINO has no device 'NPU7'"):
        load_embedder(tiny, backend="openvino", device="NPU7")
    with pytest.raises(ModelLoadError, match="backend 'onnxruntime' takes no option precision"):
        load_embedder(tiny, backend="onnxruntime", precision="f32")
    # A CPU without bf16 (the AMD kind) is what OpenVINO's capability list would show there.
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core, device="CPU": ["FP32", "INT8"])
    with pytest.raises(ModelLoadError, match=r"this CPU cannot run bf16: OpenVINO reports capabilities FP32, INT8"):
        load_embedder(tiny, backend="openvino", precision="bf16")
    assert load_embedder(tiny, backend="openvino", precision="f32").inference_precision == "f32"


def test_qoperator_cpu_int8_file_is_refused_before_openvino_reads_it(tmp_path):
    """OpenVINO 2026.4's ONNX reader crashes (SIGSEGV) on ONNX Runtime's QOperator CPU-INT8 file, so the
    file's own metadata (read without onnx) keeps it away: a one-line error, and auto picks ONNX Runtime."""
    import onnx

    from admpff.runtime.embedder import choose_backend
    from admpff.runtime.openvino_backend import onnx_metadata

    cpu_int8 = build_tiny_embedder(tmp_path / "m.cpu-int8.onnx", precision="int8-cpu")
    assert onnx_metadata(cpu_int8) == {p.key: p.value for p in onnx.load(str(cpu_int8)).metadata_props}
    assert onnx_metadata(tmp_path / "absent.onnx") == {}
    with pytest.raises(ModelLoadError, match=r"cannot load m\.cpu-int8\.onnx with OpenVINO: it is ONNX Runtime's "
                                             r"QOperator CPU-INT8 file.*--backend onnxruntime"):
        load_embedder(cpu_int8, backend="openvino")
    assert choose_backend(cpu_int8).name == "onnxruntime"
    assert type(load_embedder(cpu_int8)).__name__ == "OnnxRuntimeEmbedder"
