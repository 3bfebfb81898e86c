"""A REAL Triton Inference Server (the tritonserver nvidia-pytriton bundles) on loopback, serving admpff's
embedder through the Python backend: concurrent gRPC and HTTP clients against the local embedder, dynamic
batching, one-line errors, a server that drops mid-run, and admpff-serve's start and clean shutdown.
Every server is bounded in time and stopped by the test."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient[grpc,http]) is not installed")
pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient[grpc,http]) is not installed")

from _serving_export import real_crops  # noqa: E402
from _tiny_model import build_tiny_embedder  # noqa: E402
from admpff.runtime.embedder import ModelLoadError, load_embedder  # noqa: E402
from admpff.runtime.serve import ServeError, TritonServer, find_tritonserver, write_python_repository  # noqa: E402
from admpff.runtime.triton_backend import TritonEmbedder, TritonUnavailableError  # noqa: E402

try:
    INSTALL = find_tritonserver()
except ServeError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"no tritonserver here: {exc}", allow_module_level=True)

BOUND = 1e-5
QUEUE_DELAY_US = 20_000  # long enough that concurrent requests meet in one batch on a busy 2-core box


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Served:
    """The module's server, replaceable (the drop test restarts it on the same ports)."""

    def __init__(self, repo: Path, model: Path):
        self.repo, self.model = repo, model
        self.grpc, self.http = free_ports(2)
        self.server: TritonServer | None = None

    def start(self) -> TritonServer:
        self.server = TritonServer(self.repo, grpc_port=self.grpc, http_port=self.http, startup_timeout=60,
                                   exit_timeout=5, install=INSTALL).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def uri(self, protocol: str, name: str = "admpff") -> str:
        return f"{protocol}://127.0.0.1:{self.grpc if protocol == 'grpc' else self.http}/{name}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    model = build_tiny_embedder(root / "tiny.onnx")
    repo = root / "repo"
    for name in ("admpff", "admpff_bad"):
        write_python_repository(repo, model, name=name, max_batch=16, queue_delay_us=QUEUE_DELAY_US,
                                backend="onnxruntime", threads=1)
    # A server model whose declared output disagrees with the contract it carries.
    config = repo / "admpff_bad" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 5120 ]", "dims: [ 2048 ]"))
    s = Served(repo, model)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def local(served):
    return load_embedder(served.model, backend="onnxruntime")


def _stats(served) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc}")
    stats = client.get_inference_statistics("admpff", as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_clients_over_grpc_and_http_match_the_local_embedder(served, local):
    crops = real_crops(48, seed=1)
    modalities = ["visible" if i % 3 else "infrared" for i in range(len(crops))]
    want = local.embed(crops, modalities)
    requests_before, executions_before = _stats(served)
    ready = threading.Barrier(8)

    def client(k: int) -> list[tuple[int, np.ndarray]]:
        embedder = TritonEmbedder(served.uri("grpc" if k % 2 else "http"), connect_timeout=20)
        ready.wait(timeout=60)  # all cameras send at once, as frames arrive together
        out = []
        for start in range(k * 6, k * 6 + 6, 3):  # two requests of 3 crops each
            idx = list(range(start, start + 3))
            out.append((start, embedder.embed([crops[i] for i in idx], [modalities[i] for i in idx])))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(client, range(8)) for r in part]
    got = np.zeros_like(want)
    for start, emb in results:
        got[start:start + 3] = emb
    assert np.abs(got - want).max() <= BOUND
    requests, executions = _stats(served)
    assert requests - requests_before == 16
    # dynamic batching merged concurrent requests: fewer model executions than requests
    assert executions - executions_before < requests - requests_before


def test_contract_comes_from_the_server(served, local):
    for protocol in ("grpc", "http"):
        remote = load_embedder(served.uri(protocol), connect_timeout=20)
        assert type(remote).__name__ == "TritonEmbedder"
        assert remote.contract == local.contract and remote.max_batch == 16
        assert remote.info.checkpoint_sha256 == local.info.checkpoint_sha256
        # a batch above the server's max_batch_size is split by the embedder, not refused
        crops = real_crops(20, seed=2)
        assert np.abs(remote.embed(crops, "visible") - local.embed(crops, "visible")).max() <= BOUND


def test_unknown_model_unreachable_server_and_mismatched_contract_are_one_line_errors(served, tmp_path):
    for protocol in ("grpc", "http"):
        with pytest.raises(ModelLoadError, match="has no model 'nope' \\(it serves: admpff, admpff_bad\\)"):
            TritonEmbedder(served.uri(protocol, "nope"), connect_timeout=10)
        with pytest.raises(ModelLoadError, match="emits 'embedding' as \\[2048\\].*embedding of 5120"):
            TritonEmbedder(served.uri(protocol, "admpff_bad"), connect_timeout=10)
    (dead,) = free_ports(1)
    t0 = time.monotonic()
    with pytest.raises(TritonUnavailableError, match=f"cannot reach Triton at grpc://127.0.0.1:{dead} within 1 s"):
        TritonEmbedder(f"grpc://127.0.0.1:{dead}/admpff", connect_timeout=1)
    assert time.monotonic() - t0 < 10
    # through admpff-reid: one line on stderr, non-zero exit, nothing else
    import cv2

    (tmp_path / "people" / "alice").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "people" / "alice" / "1.png"), real_crops(1, seed=9)[0])
    p = subprocess.run([sys.executable, "-m", "admpff.runtime.reid", "--model", served.uri("grpc", "nope"),
                        "--gallery", str(tmp_path / "g.npz"), "--enroll", str(tmp_path / "people")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "has no model 'nope'" in p.stderr, p.stderr


def test_server_that_drops_mid_run_is_retried_with_backoff(served, local):
    embedder = TritonEmbedder(served.uri("grpc"), connect_timeout=20, retry_for=60, backoff_initial=0.2,
                              backoff_max=1.0)
    crops = real_crops(5, seed=4)
    assert np.abs(embedder.embed(crops, "visible") - local.embed(crops, "visible")).max() <= BOUND
    served.stop()  # the server goes away, as a camera drops
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("emb", embedder.embed(crops, "infrared")))
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive()  # still retrying, not failed
    served.start()
    worker.join(timeout=90)
    assert not worker.is_alive()
    assert embedder.retries >= 1
    assert np.abs(result["emb"] - local.embed(crops, "infrared")).max() <= BOUND


def test_admpff_serve_starts_serves_and_stops_cleanly(served, tmp_path):
    grpc_port, http_port = free_ports(2)
    proc = subprocess.Popen([sys.executable, "-m", "admpff.runtime.serve", str(served.model), "--backend", "onnxruntime",
                             "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--startup-timeout", "60",
                             "--exit-timeout", "5", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        line = ""
        while "ready" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "ready" in line and f"grpc://127.0.0.1:{grpc_port}/admpff" in line, (line, proc.poll())
        remote = load_embedder(f"grpc://127.0.0.1:{grpc_port}/admpff")
        crops = real_crops(3, seed=5)
        local = load_embedder(served.model, backend="onnxruntime")
        assert np.abs(remote.embed(crops, "visible") - local.embed(crops, "visible")).max() <= BOUND
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped (tritonserver exit code 0)" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    # the server is really gone: nothing answers on its port
    with pytest.raises(TritonUnavailableError):
        TritonEmbedder(f"grpc://127.0.0.1:{grpc_port}/admpff", connect_timeout=1)


def test_admpff_serve_bad_model_is_one_line(tmp_path):
    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"not onnx")
    p = subprocess.run([sys.executable, "-m", "admpff.runtime.serve", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("admpff-serve: error:"), p.stderr


def test_server_whose_model_fails_to_load_stops_with_the_reason(served, tmp_path):
    repo = tmp_path / "repo"
    write_python_repository(repo, served.model, name="admpff", backend="onnxruntime", threads=1)
    config = repo / "admpff" / "config.pbtxt"
    config.write_text(config.read_text().replace(str(served.model.resolve()), str(tmp_path / "gone.onnx")))
    grpc_port, http_port = free_ports(2)
    t0 = time.monotonic()
    with pytest.raises(ServeError, match="tritonserver exited with code .* during start-up: .*gone.onnx") as info:
        TritonServer(repo, grpc_port=grpc_port, http_port=http_port, startup_timeout=60, install=INSTALL).start()
    assert time.monotonic() - t0 < 60
    kept = Path(str(info.value).rsplit("(log: ", 1)[1].rstrip(")"))  # the server's log is kept for the user
    assert "gone.onnx" in kept.read_text()
    kept.unlink()


def test_throughput_benchmark_runs_and_writes_its_table_and_json(served, tmp_path):
    import json

    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-m", "admpff.runtime.triton_bench", str(served.model), "--clients", "1,2",
                        "--requests", "2", "--crops", "2", "--rounds", "1", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    rows = {(r["mode"], r["clients"]): r for r in report["results"]}
    assert set(rows) == {(m, c) for m in ("in-process", "triton", "triton-nobatch") for c in (1, 2)}
    for r in rows.values():
        assert r["requests"] == 2 * r["clients"] and 0 < r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["crops_per_s"] > 0
        if r["mode"] != "in-process":  # the server's own count: each execution runs >= 1 request of 2 crops
            assert r["crops_per_execution"] >= 2
    assert rows[("triton-nobatch", 2)]["crops_per_execution"] == 2  # no batching: one request (2 crops) per run
    assert "| 2 | triton | " in p.stdout and "vs no batching" in p.stdout


def test_server_does_not_outlive_a_killed_parent(served, tmp_path):
    """A parent killed outright (timeout -s KILL, the OOM killer) runs no cleanup: the server must still go."""
    grpc_port, http_port = free_ports(2)
    script = (f"import sys, time\nfrom admpff.runtime.serve import TritonServer\n"
              f"s = TritonServer({str(served.repo)!r}, grpc_port={grpc_port}, http_port={http_port}, startup_timeout=60)\n"
              f"s.start()\nprint('up', s.process.pid, flush=True)\ntime.sleep(300)\n")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the killed parent cannot remove its work folder
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = parent.stdout.readline()
        assert line.startswith("up"), line
        server_pid = int(line.split()[1])
    finally:
        parent.kill()
        parent.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("tritonserver outlived its killed parent")
