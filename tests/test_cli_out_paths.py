"""admpff-bench with an --out that is an existing file: one line, exit 2, before any timing (issue 10).
(admpff-train, -eval, -make-data: tests/test_cli_train_eval.py; admpff-reid: tests/test_reid_hardening.py.)"""
import subprocess
import sys
import time

from _tiny_model import build_tiny_embedder


def test_bench_out_that_is_a_file_fails_before_benchmarking(tmp_path):
    model = build_tiny_embedder(tmp_path / "tiny.onnx")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "admpff.runtime.bench", str(model), "--out", str(taken),
                        "--batch", "1", "--iters", "1000000", "--quiet"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "--out" in p.stderr and "existing file" in p.stderr
    assert time.perf_counter() - t0 < 120  # a million timed calls would take far longer: nothing ran
    assert taken.read_text() == "a file"
