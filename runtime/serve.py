"""admpff-serve: serve an admpff model from NVIDIA Triton Inference Server, with dynamic batching.

    admpff-serve models/m.cpu-int8.onnx --grpc-port 8001 --http-port 8000
    admpff-reid --model grpc://127.0.0.1:8001/admpff --source cam1=rtsp://... --source cam2=...

It writes a Triton model repository whose model is a Python-backend ``model.py`` running admpff's own
embedder (any file ``load_embedder`` runs: ONNX, an engine, OpenVINO), and starts the real
``tritonserver`` binary that PyPI's ``nvidia-pytriton`` bundles (install it with
``pip install --no-deps nvidia-pytriton``: its numpy<2 pin is only for PyTriton's own Python API,
which admpff does not use).  The server batches the crops of every client that arrive within the
queue delay into one inference.  Start-up is bounded (``--startup-timeout``); Ctrl-C or SIGTERM
shuts the server down cleanly (Triton's own graceful exit, then a kill after ``--exit-timeout``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .triton_config import TritonModelSpec, contract_parameters, model_config_text

log = logging.getLogger(__name__)

__all__ = ["ServeError", "TritonInstall", "find_tritonserver", "write_python_repository", "TritonServer", "main"]


class ServeError(RuntimeError):
    """Anything that stops the server from being set up or started; one line for the user."""


@dataclass(frozen=True)
class TritonInstall:
    """The pieces of nvidia-pytriton's bundled Triton that admpff uses."""

    server: Path          # bin/tritonserver
    python_backend: Path  # backends/python (libtriton_python.so + triton_python_backend_utils.py)
    stub: Path            # python_backend_stubs/<X.Y>/triton_python_backend_stub for this interpreter
    libs: Path            # nvidia_pytriton.libs (the server's bundled shared libraries)


def find_tritonserver() -> TritonInstall:
    """Locate the bundled server without importing ``pytriton`` (its import needs its numpy<2 deps)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError("admpff-serve needs the tritonserver that nvidia-pytriton bundles: "
                         "pip install --no-deps nvidia-pytriton (Linux x86-64/aarch64, glibc >= 2.35)")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(server=root / "bin" / "tritonserver", python_backend=root / "backends" / "python",
                            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
                            libs=root.parent.parent / "nvidia_pytriton.libs")
    if not install.server.is_file():
        raise ServeError(f"nvidia-pytriton is installed but {install.server} is missing")
    if not install.stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").glob("*"))
        raise ServeError(f"nvidia-pytriton has no Python-backend stub for Python {version} (it has {', '.join(have)})")
    if _libpython() is None:
        raise ServeError(f"the Python backend's stub links libpython{version}.so, which this interpreter does not "
                         "ship (a static build); use a Python built with --enable-shared")
    return install


def _libpython() -> str | None:
    """The shared libpython of this interpreter (its own LIBDIR first, so the stub matches the venv)."""
    import ctypes.util

    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir and (Path(libdir) / name).is_file():
        return str(Path(libdir) / name)
    return ctypes.util.find_library(f"python{sys.version_info.major}.{sys.version_info.minor}")


def _site_dirs() -> list[str]:
    """This interpreter's site directories, for the stub's embedded interpreter (venv + editable installs)."""
    import site

    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def write_python_repository(repo: str | Path, model: str | Path, *, name: str = "admpff", max_batch: int = 32,
                            queue_delay_us: int = 2000, instances: int = 1, threads: int | None = None,
                            backend: str = "auto", preferred_batch_sizes=(), dynamic_batching: bool = True) -> Path:
    """Write ``repo/<name>/{config.pbtxt, 1/model.py}`` serving ``model`` through admpff's embedder.

    The model is loaded here once first, so a bad file fails now with one line rather than in the
    server's log.  Returns the model's folder."""
    from .embedder import load_embedder

    model = Path(model).resolve()
    embedder = load_embedder(model, backend=backend, threads=threads)
    info, chosen = embedder.info, type(embedder).__name__
    del embedder
    options = {"threads": threads} if threads else {}
    params = contract_parameters(info.raw)
    params.update({"admpff.serve.model_path": str(model), "admpff.serve.backend": backend,
                   "admpff.serve.options": json.dumps(options), "admpff.serve.site_dirs": json.dumps(_site_dirs()),
                   "admpff.serve.embedder": chosen})
    spec = TritonModelSpec(name=name, contract=info.contract, max_batch_size=max_batch, backend="python",
                           queue_delay_us=queue_delay_us, preferred_batch_sizes=preferred_batch_sizes,
                           dynamic_batching=dynamic_batching,
                           instance_count=instances, instance_kind="KIND_CPU", parameters=params)
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    from .atomic import write_text

    write_text(folder / "config.pbtxt", model_config_text(spec))
    write_text(folder / "1" / "model.py", (Path(__file__).with_name("triton_python_model.py")).read_text())
    return folder


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the server when the process that started it dies, however it dies
    (a ``timeout`` or an OOM kill skips every ``finally``; measured: an orphaned server kept running)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux/glibc: stop() and the signal handlers remain


class TritonServer:
    """A ``tritonserver`` child process: started, waited for (bounded), stopped cleanly.

    Use as a context manager.  ``log_path`` receives the server's output; the last lines are quoted
    in the error when it fails to start.
    """

    def __init__(self, repository: str | Path, *, grpc_port: int = 8001, http_port: int = 8000,
                 metrics_port: int | None = None, host: str = "127.0.0.1", startup_timeout: float = 120.0,
                 exit_timeout: float = 15.0, log_path: str | Path | None = None, verbose: bool = False,
                 install: TritonInstall | None = None):
        self.repository = Path(repository).resolve()
        self.grpc_port, self.http_port, self.metrics_port = int(grpc_port), int(http_port), metrics_port
        self.host = host
        self.startup_timeout, self.exit_timeout = float(startup_timeout), float(exit_timeout)
        self.install = install or find_tritonserver()
        self.verbose = verbose
        self._work = Path(tempfile.mkdtemp(prefix="admpff-triton-"))
        self.log_path = Path(log_path) if log_path else self._work / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    # The python backend looks for its stub next to libtriton_python.so; the wheel keeps the stubs per
    # Python version elsewhere, so a private backend folder links the pieces together.
    def _backend_directory(self) -> Path:
        backends = self._work / "backends"
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for item in self.install.python_backend.iterdir():
            if item.is_file():
                (python / item.name).symlink_to(item)
        (python / "triton_python_backend_stub").symlink_to(self.install.stub)
        return backends

    def _environment(self) -> dict:
        env = dict(os.environ)
        # The stub links libpython<X.Y>: take this interpreter's, so the embedded one matches the venv.
        libdirs = [str(self.install.libs), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + [env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
        env["PYTHONHOME"] = sys.base_prefix
        return env

    def command(self) -> list[str]:
        cmd = [str(self.install.server), f"--model-repository={self.repository}",
               f"--backend-directory={self._backend_directory()}",
               f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--http-address={self.host}",
               f"--exit-timeout-secs={int(self.exit_timeout)}", "--strict-readiness=true",
               "--disable-auto-complete-config",
               # Large crop batches: start the stub's shared memory at 64 MB instead of growing from 1 MB.
               "--backend-config=python,shm-default-byte-size=67108864",
               "--backend-config=python,shm-growth-byte-size=16777216"]
        if self.metrics_port:
            cmd += [f"--metrics-port={self.metrics_port}", f"--metrics-address={self.host}"]
        else:
            cmd += ["--allow-metrics=false"]
        if self.verbose:
            cmd += ["--log-verbose=1"]
        return cmd

    def start(self) -> "TritonServer":
        if not self.repository.is_dir():
            raise ServeError(f"model repository {self.repository} does not exist")
        cmd = self.command()
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self._environment(),
                                        start_new_session=True,  # its own group: the stubs stop with it
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                reason = self._log_reason()
                kept = self._cleanup(keep_log=True)
                raise ServeError(f"tritonserver exited with code {code} during start-up: {reason}"
                                 + (f" (log: {kept})" if kept else ""))
            if self.ready():
                return self
            if time.monotonic() > deadline:
                reason = self._log_reason()
                self.stop(keep_log=True)
                raise ServeError(f"tritonserver was not ready within {self.startup_timeout:g} s: {reason}")
            time.sleep(0.2)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _log_reason(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no server log"
        # Triton's own error lines start with "E" + date; fall back to the last line.
        errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
        picked = deque((errors or lines), maxlen=2)
        return " | ".join(ln.strip() for ln in picked) or "empty server log"

    def stop(self, keep_log: bool = False) -> int | None:
        """SIGTERM (Triton drains and exits), then SIGKILL to the group after ``exit_timeout``."""
        proc, code = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                code = proc.wait(timeout=self.exit_timeout + 5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait(timeout=10)
        elif proc is not None:
            code = proc.returncode
        # Stubs normally exit with the server; make sure none of the group is left behind.
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._cleanup(keep_log)
        return code

    def _cleanup(self, keep_log: bool = False) -> Path | None:
        """Remove the private backend folder (and the log, unless asked to keep it: start-up failed)."""
        log_file = getattr(self, "_log", None)
        if log_file is not None and not log_file.closed:
            log_file.close()
        kept = None
        if keep_log and self.log_path.parent == self._work and self.log_path.exists():
            kept = Path(tempfile.gettempdir()) / f"admpff-tritonserver-{os.getpid()}-{self.http_port}.log"
            try:
                shutil.copy(self.log_path, kept)
            except OSError:
                kept = None
        shutil.rmtree(self._work, ignore_errors=True)
        return kept if keep_log else None

    def urls(self, model: str) -> list[str]:
        return [f"grpc://{self.host}:{self.grpc_port}/{model}", f"http://{self.host}:{self.http_port}/{model}"]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    from .cli_support import make_parser

    ap = make_parser("admpff-serve", __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("model", help="model file admpff's runtime runs (.onnx, .engine, OpenVINO .xml)")
    ap.add_argument("--name", default="admpff", help="model name on the server (the URI's path)")
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000, help="also used for the readiness check")
    ap.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (0: metrics off)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    ap.add_argument("--max-batch", type=int, default=32, help="largest batch the server forms")
    ap.add_argument("--queue-delay-us", type=int, default=2000,
                    help="dynamic batching: how long a request may wait for others to join its batch")
    ap.add_argument("--instances", type=int, default=1, help="model instances (each runs batches in parallel)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per instance (backend default if unset)")
    ap.add_argument("--backend", default="auto", help="admpff backend inside the server (auto, onnxruntime, openvino, tensorrt)")
    ap.add_argument("--repository", default=None, help="write the model repository here and keep it (default: a temporary folder)")
    ap.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server to be ready")
    ap.add_argument("--exit-timeout", type=float, default=15.0, help="seconds Triton may take to drain on shutdown")
    ap.add_argument("--log", default=None, help="write the server's log here")
    ap.add_argument("-v", "--verbose", action="store_true", help="Triton's verbose log")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .cli_support import USAGE_ERROR, CommandError
    from .embedder import ModelLoadError

    keep = args.repository is not None
    repo = Path(args.repository) if keep else Path(tempfile.mkdtemp(prefix="admpff-repo-"))
    server = None
    stop_requested = []

    def on_signal(signum, _frame):
        stop_requested.append(signum)

    try:
        if not Path(args.model).is_file():
            raise ServeError(f"model file not found: {args.model}")
        install = find_tritonserver()
        write_python_repository(repo, args.model, name=args.name, max_batch=args.max_batch,
                                queue_delay_us=args.queue_delay_us, instances=args.instances,
                                threads=args.threads, backend=args.backend)
        server = TritonServer(repo, grpc_port=args.grpc_port, http_port=args.http_port,
                              metrics_port=args.metrics_port or None, host=args.host,
                              startup_timeout=args.startup_timeout, exit_timeout=args.exit_timeout,
                              log_path=args.log, verbose=args.verbose, install=install)
        print(f"admpff-serve: starting tritonserver (repository {repo}) ...", flush=True)
        t0 = time.perf_counter()
        server.start()
        print(f"admpff-serve: ready in {time.perf_counter() - t0:.1f} s; serving "
              + " and ".join(server.urls(args.name)) + " (Ctrl-C stops)", flush=True)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop_requested:
            if server.process.poll() is not None:
                raise ServeError(f"tritonserver exited with code {server.process.returncode}: {server._log_reason()}")
            time.sleep(0.5)
        print("admpff-serve: stopping ...", flush=True)
        code = server.stop()
        server = None
        print(f"admpff-serve: stopped (tritonserver exit code {code})", flush=True)
        return 0
    except (ServeError, ModelLoadError, CommandError, ValueError, OSError) as exc:
        print(f"admpff-serve: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()
        if not keep:
            shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
