"""Triton Python-backend model that serves an admpff embedder (copied into the repository as model.py).

``admpff-serve`` writes this file to ``REPO/<name>/1/model.py``.  Triton's Python backend stub runs it
with an embedded interpreter that does not know admpff's environment: the config's parameters name
the site directories to add (``admpff.serve.site_dirs``, the serving interpreter's own), the model
file and backend.  Dynamic batching hands ``execute`` several requests at once; their crops are run as
one batch, which is what the server gains over one process per camera.

Tensors cross the stub through DLPack, not ``as_numpy``/``Tensor(name, array)``: the stub's pybind11
reads numpy 1.x dtype internals, and with numpy 2 (the venv's) those calls see an item size of 0 (an
empty output was measured here with tritonserver 2.51).  DLPack carries its own dtype and strides.
"""
import json
import site

import numpy as np

import triton_python_backend_utils as pb_utils  # provided by the Python backend stub


def _param(config, key, default=""):
    return (config.get("parameters", {}).get(key) or {}).get("string_value", default)


def _array(tensor) -> np.ndarray:
    """A request tensor as a numpy view of the stub's buffer (``execute`` concatenates, which copies)."""
    return np.from_dlpack(tensor)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        for directory in json.loads(_param(config, "admpff.serve.site_dirs", "[]")):
            site.addsitedir(directory)  # processes .pth files too (editable installs)
        from admpff.runtime.embedder import load_embedder

        options = json.loads(_param(config, "admpff.serve.options", "{}"))
        self.embedder = load_embedder(_param(config, "admpff.serve.model_path"),
                                      backend=_param(config, "admpff.serve.backend", "auto"), **options)
        contract = self.embedder.contract
        self.image_name = contract.input_names[0]
        self.modality_name = contract.input_names[1] if len(contract.input_names) > 1 else None
        self.output_name = contract.output_name
        # A single-input file is fixed to one modality: every crop is embedded as that modality.
        fixed = self.embedder.info.raw.get("admpff.fixed_modality")
        self.fixed_code = contract.modality_code(fixed) if fixed else 0

    def execute(self, requests):
        images, modality, sizes = [], [], []
        for request in requests:
            batch = _array(pb_utils.get_input_tensor_by_name(request, self.image_name))
            images.append(batch)
            sizes.append(len(batch))
            if self.modality_name:
                codes = _array(pb_utils.get_input_tensor_by_name(request, self.modality_name))
                modality.append(codes.reshape(-1).astype(np.int32))
            else:
                modality.append(np.full(len(batch), self.fixed_code, np.int32))
        try:
            out = self.embedder.embed_batch(np.concatenate(images), np.concatenate(modality))
        except Exception as exc:  # every request of this batch gets the one-line reason
            error = pb_utils.TritonError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensor = pb_utils.Tensor.from_dlpack(self.output_name, np.ascontiguousarray(out[start:start + n], np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses

    def finalize(self):
        self.embedder = None
