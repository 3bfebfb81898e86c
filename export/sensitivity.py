"""Per-layer INT8 sensitivity: which convolutions cost the embedding the most when quantized.

One pass, no re-calibration: the FP32 and the Q/DQ models run on the same crops with every
convolution's input and output exposed (ORT's Q/DQ graph keeps the original tensor names).  A layer's
score is the error its output carries minus the error already in its input, i.e. what quantizing that
layer adds; error = 1 - cosine per sample, averaged.  ``admpff-export`` keeps the top layers in float
when INT8 misses its fidelity bar, re-quantizes and reports what it excluded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from .graph_regions import embedding_head_nodes


@dataclass
class LayerError:
    node: str
    input_error: float
    output_error: float

    @property
    def added(self) -> float:
        return self.output_error - self.input_error

    def to_dict(self) -> dict:
        return dict(asdict(self), added=self.added)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def conv_sensitivity(fp32_path: str | Path, qdq_path: str | Path, images: np.ndarray, modality: np.ndarray,
                     batch: int = 4) -> list[LayerError]:
    """Convolutions of the Q/DQ model ranked by the error they add (largest first)."""
    import onnxruntime as ort

    fp32 = onnx.load(str(fp32_path))
    qdq = onnx.load(str(qdq_path))
    head = embedding_head_nodes(fp32)
    q_names = {n.name for n in qdq.graph.node if n.op_type == "Conv"}
    convs = [n for n in fp32.graph.node if n.op_type == "Conv" and n.name not in head and n.name in q_names]
    tensors = sorted({t for n in convs for t in (n.input[0], n.output[0])})
    opts = ort.SessionOptions()
    # No fusion: the exposed tensors must be the ones named in the graph.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = [ort.InferenceSession(_with_outputs(m, tensors), opts, providers=["CPUExecutionProvider"])
                for m in (fp32, qdq)]
    err_sum = dict.fromkeys(tensors, 0.0)
    for start in range(0, len(images), batch):
        feed = {"images": images[start:start + batch], "modality": modality[start:start + batch]}
        outs = []
        for s in sessions:
            names = [o.name for o in s.get_outputs()]
            outs.append(dict(zip(names, s.run(None, feed))))
        for t in tensors:
            a = outs[0][t].reshape(len(feed["images"]), -1).astype(np.float64)
            b = outs[1][t].reshape(len(feed["images"]), -1).astype(np.float64)
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            err_sum[t] += float((1.0 - cos).sum())
    err = {t: v / len(images) for t, v in err_sum.items()}
    ranking = [LayerError(n.name, err[n.input[0]], err[n.output[0]]) for n in convs]
    return sorted(ranking, key=lambda e: -e.added)
