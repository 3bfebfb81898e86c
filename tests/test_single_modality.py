"""Single-input exports (--modality): one input, the other stem gone, equal to the two-input model called
with that modality, dynamic batch kept, Q/DQ rules intact on INT8, and the runtime refusing the other modality."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from _serving_export import real_crops, serving_export
from admpff.export.checkpoint_io import ExportError
from admpff.export.onnx_export import batch_is_dynamic, read_metadata
from admpff.export.qdq_check import check_qdq_model, qdq_summary
from admpff.export.single_modality import (FIXED_MODALITY_KEY, PARITY_BOUND, fix_modality, remaining_where_nodes,
                                           single_modality_path)
from admpff.runtime.contract import ModelInfo
from admpff.runtime.embedder import load_embedder
from admpff.runtime.preprocess import crops_to_batch

MODALITIES = {"visible": 0, "infrared": 1}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return serving_export(tmp_path_factory.getbasetemp() / "serving-export")


def _session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("suffix", ["", ".int8", ".cpu-int8"])
@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_single_input_file_equals_two_input_model_with_that_modality(exported, suffix, modality):
    two, single = exported.file(f"{suffix}.onnx"), exported.file(f".{modality}{suffix}.onnx")
    model = onnx.load(str(single))
    assert [i.name for i in model.graph.input] == ["images"]
    assert batch_is_dynamic(model)
    meta = read_metadata(model)
    assert meta[FIXED_MODALITY_KEY] == modality
    assert ModelInfo.from_metadata(meta).contract.input_names == ("images",)
    assert meta["admpff.precision"] == read_metadata(onnx.load(str(two)))["admpff.precision"]
    # the stem selection is folded away, so the other stem's nodes are gone
    assert remaining_where_nodes(model) == 0 < remaining_where_nodes(two)
    assert len(model.graph.node) < len(onnx.load(str(two)).graph.node)

    a, b = _session(two), _session(single)
    contract = ModelInfo.from_metadata(meta).contract
    for n in (1, 5):  # dynamic batch: two sizes through the same file
        batch = crops_to_batch(real_crops(n, seed=n), contract)
        want = a.run(["embedding"], {"images": batch, "modality": np.full(n, MODALITIES[modality], np.int32)})[0]
        got = b.run(["embedding"], {"images": batch})[0]
        assert got.shape == (n, contract.embedding_dim)
        assert np.abs(got - want).max() <= PARITY_BOUND


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_int8_single_input_file_keeps_tensorrt_qdq_rules(exported, modality):
    two, single = exported.file(".int8.onnx"), exported.file(f".{modality}.int8.onnx")
    assert check_qdq_model(single) == []
    before, after = qdq_summary(two), qdq_summary(single)
    # one stem's quantized convolutions left with it; what remains is still quantized
    assert 0 < after.quantized_convs < before.quantized_convs
    assert after.per_channel_weights > 0


def test_runtime_embeds_its_modality_and_refuses_the_other(exported):
    single = load_embedder(exported.file(".infrared.onnx"), backend="onnxruntime")
    both = load_embedder(exported.file(".onnx"), backend="onnxruntime")
    assert single.fixed_modality == "infrared" and both.fixed_modality is None
    crops = real_crops(4, seed=3)
    assert np.abs(single.embed(crops, "infrared") - both.embed(crops, "infrared")).max() <= PARITY_BOUND
    with pytest.raises(ValueError, match="fixed to infrared"):
        single.embed(crops, ["infrared", "visible", "infrared", "infrared"])


def test_fixing_twice_or_a_file_without_contract_is_refused(exported, tmp_path):
    with pytest.raises(ExportError, match="already fixed"):
        fix_modality(exported.file(".visible.onnx"), tmp_path / "x.onnx", "infrared")
    bare = onnx.load(str(exported.file(".onnx")))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ExportError, match="no admpff contract"):
        fix_modality(tmp_path / "bare.onnx", tmp_path / "y.onnx", "visible")
    with pytest.raises(ValueError, match="unknown modality"):
        fix_modality(exported.file(".onnx"), tmp_path / "z.onnx", "ultraviolet")
    assert not (tmp_path / "z.onnx").exists()


def test_file_names():
    from pathlib import Path
    assert single_modality_path(Path("d/m.int8.onnx"), "visible", "m") == Path("d/m.visible.int8.onnx")
    assert single_modality_path(Path("d/m.onnx"), "infrared", "m") == Path("d/m.infrared.onnx")


def test_deepstream_without_modality_is_a_one_line_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "admpff.export.cli", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o"),
                        "--deepstream", str(tmp_path / "ds")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--deepstream needs --modality" in p.stderr
    assert not (tmp_path / "ds").exists()
