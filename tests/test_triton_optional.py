"""The runtime imports and runs without tritonclient; only a grpc:// or http:// model asks for it, in one line."""
import subprocess
import sys

CODE = r"""
import sys
sys.modules["tritonclient"] = None          # as if the serve extra were not installed
import admpff.runtime, admpff.runtime.reid, admpff.runtime.serve, admpff.runtime.triton_backend
from admpff.runtime.embedder import ModelLoadError, choose_backend, load_embedder
assert choose_backend("grpc://host:8001/admpff").name == "triton"
try:
    load_embedder("grpc://127.0.0.1:1/admpff")
except ModelLoadError as exc:
    print(exc)
"""


def test_runtime_without_tritonclient():
    p = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ("a grpc:// model needs tritonclient (it is not installed): "
                                "pip install 'admpff[serve]'")
