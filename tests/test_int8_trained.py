"""INT8 fidelity on a trained model (not random weights): train briefly on generated data, export with
calibration on the training split, verify on held-out identities."""
import json

import onnx
import pytest
import torch

from admpff.export import cli as export_cli
from admpff.export.cpu_kernels import resolve_cpu_kernel
from admpff.export.onnx_export import read_metadata
from admpff.export.qdq_check import check_qdq_model
from admpff.training import cli_train
from admpff.training.datasets.synthetic import write_sysu

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("int8")
    data = base / "sysu"
    write_sysu(data, num_ids=30, images_per_cam=3, seed=5)
    out = base / "run"
    code = cli_train.main(["--dataset", "sysu", "--data", str(data), "--out", str(out), "--backbone", "resnet18",
                           "--size", "192x96", "--dim", "32", "--en-rows", "2", "--pretrained", "none", "--workers", "0",
                           "--no-progress", "--batch-p", "4", "--batch-k", "2", "--epochs", "4",
                           "--max-steps-per-epoch", "6", "--lr", "0.02", "--no-tensorboard"])
    assert code == 0
    return data, out / "last.pt", base


def test_int8_fidelity_on_a_trained_model(trained):
    data, ckpt, base = trained
    models = base / "models"
    code = export_cli.main([str(ckpt), "--out", str(models), "--name", "m", "--int8", "--cpu-int8",
                            "--calib-data", f"sysu:{data}", "--calib-samples", "64", "--verify-samples", "32",
                            "--verify-data", f"sysu:{data}", "-q"])
    assert code == 0
    verify = json.loads((models / "m.verify.json").read_text())
    report = {r["precision"]: r for r in verify["results"]}
    assert report["fp32"]["max_abs"] <= 1e-4
    for precision in ("int8-qdq", "int8-cpu"):
        r = report[precision]
        assert r["cos_mean"] >= 0.99 and r["cos_min"] >= 0.97, r
        # held-out identities (the SYSU test protocol on the generated set): retrieval barely moves
        assert abs(r["mAP_reference"] - r["mAP"]) <= 2.0, r
    assert not check_qdq_model(models / "m.int8.onnx", max_opset=17)
    cpu_meta = read_metadata(onnx.load(str(models / "m.cpu-int8.onnx"), load_external_data=False))
    assert cpu_meta["admpff.cpu_kernel"] == resolve_cpu_kernel("auto")
    assert (int(cpu_meta.get("admpff.qgemm_convs", 0)) > 0) == (cpu_meta["admpff.cpu_kernel"] == "qgemm")
    # If the first INT8 file missed a bar, the most sensitive convolutions were kept in float (and named).
    if "sensitivity" in verify:
        for precision, kept in verify["sensitivity"]["kept_float"].items():
            if precision == "int8-qdq":
                assert kept and all(name in _float_convs(models / "m.int8.onnx") for name in kept)


def _float_convs(path):
    import onnx
    m = onnx.load(str(path))
    producers = {o: n for n in m.graph.node for o in n.output}
    return {n.name for n in m.graph.node if n.op_type == "Conv"
            and producers.get(n.input[1]) is None}  # weight straight from an initializer: not quantized
