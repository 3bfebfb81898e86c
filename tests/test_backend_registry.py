"""The backend table behind ``load_embedder``: suffixes, URL schemes, explicit names, the ``auto`` rule,
lazy imports, and ``embed`` given one image instead of a list."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _tiny_model import build_tiny_embedder
from admpff.runtime import embedder as embedder_module
from admpff.runtime.embedder import (Embedder, ModelLoadError, OnnxRuntimeEmbedder, choose_backend,
                                     load_embedder, register_backend)

HAVE_OPENVINO = embedder_module.backends()["openvino"].installed()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_embedder(tmp_path_factory.mktemp("registry") / "tiny.onnx")


class RecordingEmbedder(Embedder):
    """A backend for URIs, registered by the tests: it records how it was made."""

    def __init__(self, uri, answer: int = 0):
        from admpff.runtime.contract import DEFAULT_CONTRACT, ModelInfo

        self.uri, self.answer = uri, answer
        super().__init__(ModelInfo(DEFAULT_CONTRACT, "fp32", "", "", True, {}), Path("remote"))

    def _infer(self, images, modality):
        raise NotImplementedError


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(embedder_module, "_BACKENDS", dict(embedder_module._BACKENDS))


def test_suffixes_pick_their_backend():
    assert choose_backend("m.engine").name == "tensorrt"
    assert choose_backend("m.plan").name == "tensorrt"
    assert choose_backend("m.xml").name == "openvino"
    with pytest.raises(ModelLoadError, match=r"unsupported model file 'm\.pt'.*\.onnx"):
        choose_backend("m.pt")


def test_auto_rule_for_onnx(monkeypatch):
    monkeypatch.setattr(embedder_module, "_ort_has_gpu", lambda: False)
    monkeypatch.setattr(embedder_module, "_is_x86", lambda: True)
    assert choose_backend("m.onnx").name == ("openvino" if HAVE_OPENVINO else "onnxruntime")
    # a GPU provider in ONNX Runtime wins over OpenVINO
    monkeypatch.setattr(embedder_module, "_ort_has_gpu", lambda: True)
    assert choose_backend("m.onnx").name == "onnxruntime"
    # off x86 (an Arm board without a GPU provider) ONNX Runtime runs it
    monkeypatch.setattr(embedder_module, "_ort_has_gpu", lambda: False)
    monkeypatch.setattr(embedder_module, "_is_x86", lambda: False)
    assert choose_backend("m.onnx").name == "onnxruntime"


def test_auto_honours_options_only_one_backend_takes(monkeypatch):
    monkeypatch.setattr(embedder_module, "_ort_has_gpu", lambda: False)
    monkeypatch.setattr(embedder_module, "_is_x86", lambda: True)
    assert choose_backend("m.onnx", options={"providers": ["CPUExecutionProvider"]}).name == "onnxruntime"
    if HAVE_OPENVINO:
        monkeypatch.setattr(embedder_module, "_is_x86", lambda: False)
        assert choose_backend("m.onnx", options={"precision": "f32"}).name == "openvino"


def test_explicit_backend_must_accept_the_file():
    assert choose_backend("m.onnx", "onnxruntime").name == "onnxruntime"
    with pytest.raises(ModelLoadError, match=r"backend 'tensorrt' does not run \.onnx files"):
        choose_backend("m.onnx", "tensorrt")
    with pytest.raises(ModelLoadError, match=r"unknown backend 'tflite'; choose from auto, onnxruntime"):
        choose_backend("m.onnx", "tflite")


def test_uri_schemes_and_registration(scratch_registry):
    with pytest.raises(ModelLoadError, match="no backend serves zmq:// model URIs"):
        load_embedder("zmq://host:1/reid")
    register_backend("recording", loader=f"{__name__}:RecordingEmbedder", schemes=("zmq",), threads_option=None)
    emb = load_embedder("zmq://host:1/reid", answer=42, threads=4)
    assert isinstance(emb, RecordingEmbedder)
    assert emb.uri == "zmq://host:1/reid" and emb.answer == 42  # the URI is passed through, not a Path
    with pytest.raises(ModelLoadError, match="takes no option colour"):
        load_embedder("zmq://host:1/reid", colour="red")
    # a Windows drive letter is a path, not a scheme
    assert embedder_module._scheme("C:\\models\\m.onnx") == ""


def test_explicit_onnxruntime_and_threads(tiny):
    emb = load_embedder(tiny, backend="onnxruntime", threads=1)
    assert isinstance(emb, OnnxRuntimeEmbedder)
    assert emb.session.get_session_options().intra_op_num_threads == 1


def test_runtime_import_pulls_no_backend_and_no_torch():
    code = ("import sys; import admpff.runtime as r; from admpff.runtime import load_embedder, Embedder, "
            "ModelLoadError; import admpff.runtime.embedder, admpff.runtime.openvino_backend, "
            "admpff.runtime.onnxruntime_backend, admpff.runtime.tensorrt_backend; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'tritonclient') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- embed() given one image ----------------------------------------------------------------------
def test_one_image_is_one_crop_not_one_row_per_pixel_row(tiny):
    emb = load_embedder(tiny, backend="onnxruntime")
    rng = np.random.default_rng(3)
    crop = rng.integers(0, 255, (120, 50, 3), dtype=np.uint8)
    single = emb.embed(crop, "visible")
    assert single.shape == (1, emb.dim)
    np.testing.assert_allclose(single, emb.embed([crop], "visible"), atol=1e-6)
    gray = crop[:, :, 1]
    assert emb.embed(gray, "infrared").shape == (1, emb.dim)


def test_stack_of_crops_and_bad_shapes(tiny):
    emb = load_embedder(tiny, backend="onnxruntime")
    stack = np.random.default_rng(4).integers(0, 255, (3, 64, 32, 3), dtype=np.uint8)
    out = emb.embed(stack, ["visible", "infrared", "visible"])
    assert out.shape == (3, emb.dim)
    np.testing.assert_allclose(out[1], emb.embed([stack[1]], "infrared")[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"crops array has shape \(5,\)"):
        emb.embed(np.zeros(5, np.uint8), "visible")
    with pytest.raises(TypeError, match="crops is str"):
        emb.embed("person.png", "visible")


def test_reid_backend_flags_reach_load_embedder(tiny, tmp_path):
    """admpff-reid --backend/--precision reach load_embedder: a precision for a backend without one, or an
    unknown backend, is one line and exit 2."""
    base = [sys.executable, "-m", "admpff.runtime.reid", "--model", str(tiny), "--source", "x=0"]
    p = subprocess.run(base + ["--backend", "onnxruntime", "--precision", "bf16"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == "admpff-reid: error: backend 'onnxruntime' takes no option precision"
    p = subprocess.run(base + ["--backend", "tflite"], capture_output=True, text=True)
    assert p.returncode == 2 and "--backend" in p.stderr and "tflite" in p.stderr
