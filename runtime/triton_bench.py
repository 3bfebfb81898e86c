"""Throughput of many cameras: Triton (dynamic batching on and off) against the in-process embedder.

    python -m admpff.runtime.triton_bench models/admpff.onnx --clients 1,4,16 --video ../shared/data/vtest.avi

Each client is one camera: a thread that sends ``--crops`` person crops per request (one frame's people),
``--requests`` times, and waits for the answer before the next.  Three ways to embed, interleaved
round by round so a busy machine slows all of them alike:

* ``in-process``: the clients share one local embedder (admpff's own runtime, same backend and threads);
* ``triton``: a real tritonserver (admpff-serve's repository) with dynamic batching (``--queue-delay-us``);
* ``triton-nobatch``: the same server model without dynamic batching (one request per execution).

The difference between the last two is what the server's dynamic batching gains.  Latency is per request
(median, p90, p99 in ms); throughput is crops per second over the wall time of all clients together.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .cli_support import USAGE_ERROR, CommandError, check_output_file, make_parser
from .cpu_info import cpu_model

MODES = ("in-process", "triton", "triton-nobatch")


def sample_crops(n: int, video: str | None, seed: int = 0) -> list[np.ndarray]:
    """Person-sized windows from a real video (if given), else textured synthetic crops."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    if video:
        cap = cv2.VideoCapture(str(video))
        for i in range(0, 400, 40):
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, frame = cap.read()
            if ok:
                frames.append(frame)
        cap.release()
        if not frames:
            raise CommandError(f"--video {video}: no frame could be read")
    crops = []
    for _ in range(n):
        h = int(rng.integers(100, 220))
        w = max(24, int(h * rng.uniform(0.35, 0.55)))
        if frames:
            f = frames[int(rng.integers(len(frames)))]
            h, w = min(h, f.shape[0]), min(w, f.shape[1])
            y, x = int(rng.integers(0, f.shape[0] - h + 1)), int(rng.integers(0, f.shape[1] - w + 1))
            crops.append(f[y:y + h, x:x + w].copy())
        else:
            base = rng.integers(0, 255, (h // 8 + 1, 8, 3), dtype=np.uint8)
            crops.append(cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC))
    return crops


def run_clients(make_embedder, clients: int, requests: int, crops: list[np.ndarray], per_request: int) -> dict:
    """``clients`` threads, each sending ``requests`` requests of ``per_request`` crops; returns the timings."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def camera(k: int) -> None:
        embedder = make_embedder()
        rng = np.random.default_rng(k)
        batches = [[crops[i] for i in rng.integers(0, len(crops), per_request)] for _ in range(requests)]
        embedder.embed(batches[0], "visible")  # connect and warm up outside the timing
        barrier.wait()
        for batch in batches:
            t0 = time.perf_counter()
            embedder.embed(batch, "visible")
            with lock:
                latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(camera, range(clients)))
    wall = time.perf_counter() - start
    return {"latencies": latencies, "wall": wall, "crops": clients * requests * per_request}


def summarize(runs: list[dict]) -> dict:
    lat = np.concatenate([np.asarray(r["latencies"]) for r in runs]) * 1000.0
    throughput = [r["crops"] / r["wall"] for r in runs]
    out = {"requests": int(lat.size), "median_ms": float(np.median(lat)), "p90_ms": float(np.percentile(lat, 90)),
           "p99_ms": float(np.percentile(lat, 99)), "crops_per_s": float(np.median(throughput)),
           "crops_per_s_runs": [round(t, 2) for t in throughput]}
    per_exec = [r["crops_per_execution"] for r in runs if "crops_per_execution" in r]
    if per_exec:
        out["crops_per_execution"] = float(np.mean(per_exec))
    return out


def _server_counts(grpc_port: int):
    """A function returning {model: (inferences, executions)} from the server's statistics."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")

    def counts() -> dict[str, tuple[int, int]]:
        stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
        return {s["name"]: (int(s.get("inference_count", 0)), int(s.get("execution_count", 0))) for s in stats}
    return counts


def build_parser() -> argparse.ArgumentParser:
    ap = make_parser("python -m admpff.runtime.triton_bench", __doc__.split("\n\n")[0],
                     epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("model", help="model file (what admpff-serve would serve)")
    ap.add_argument("--clients", default="1,4,16", help="comma list of concurrent clients (cameras)")
    ap.add_argument("--requests", type=int, default=6, help="requests per client per round")
    ap.add_argument("--crops", type=int, default=4, help="crops per request (people in one frame)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per setting")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of the embedder (server and in-process alike)")
    ap.add_argument("--backend", default="onnxruntime", help="admpff backend on both sides")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--queue-delay-us", type=int, default=2000)
    ap.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    ap.add_argument("--video", default=None, help="take crops from this video (default: synthetic crops)")
    ap.add_argument("--json", default=None, help="write the results here")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import signal

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the server's context manager stops it.
    signal.signal(signal.SIGTERM, _interrupt)
    from .embedder import ModelLoadError, load_embedder
    from .serve import ServeError, TritonServer, write_python_repository

    try:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
        if not clients or min(clients) < 1 or args.requests < 1 or args.crops < 1 or args.rounds < 1:
            raise CommandError("--clients, --requests, --crops and --rounds must be positive")
        if args.json:
            check_output_file(args.json, "--json")
        if not Path(args.model).is_file():
            raise CommandError(f"model file not found: {args.model}")
        crops = sample_crops(64, args.video)
        local = load_embedder(args.model, backend=args.backend, threads=args.threads)
        with tempfile.TemporaryDirectory(prefix="admpff-bench-repo-") as repo:
            for name, batching in (("admpff", True), ("admpff_nobatch", False)):
                write_python_repository(repo, args.model, name=name, max_batch=args.max_batch,
                                        queue_delay_us=args.queue_delay_us, threads=args.threads,
                                        backend=args.backend, dynamic_batching=batching)
            from .triton_backend import TritonEmbedder
            import socket

            ports = []
            for _ in range(2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    ports.append(s.getsockname()[1])
            print(f"starting tritonserver (gRPC {ports[0]}, HTTP {ports[1]}) ...", flush=True)
            with TritonServer(repo, grpc_port=ports[0], http_port=ports[1], startup_timeout=120) as server:
                port = server.grpc_port if args.protocol == "grpc" else server.http_port
                makers = {
                    "in-process": lambda: local,
                    "triton": lambda: TritonEmbedder(f"{args.protocol}://127.0.0.1:{port}/admpff"),
                    "triton-nobatch": lambda: TritonEmbedder(f"{args.protocol}://127.0.0.1:{port}/admpff_nobatch"),
                }
                runs = {(m, c): [] for m in MODES for c in clients}
                counts = _server_counts(server.grpc_port)
                for r in range(args.rounds):
                    for c in clients:
                        order = MODES if r % 2 == 0 else tuple(reversed(MODES))
                        for mode in order:
                            before = counts()
                            runs[(mode, c)].append(run_clients(makers[mode], c, args.requests, crops, args.crops))
                            after = counts()
                            model = {"triton": "admpff", "triton-nobatch": "admpff_nobatch"}.get(mode)
                            if model:  # crops per model execution, from the server's own statistics
                                crops_run = after[model][0] - before[model][0]
                                executions = after[model][1] - before[model][1]
                                runs[(mode, c)][-1]["crops_per_execution"] = crops_run / max(executions, 1)
                            s = runs[(mode, c)][-1]
                            print(f"  round {r + 1}/{args.rounds} {mode:<15} {c:>3} clients: "
                                  f"{s['crops'] / s['wall']:7.1f} crops/s", flush=True)
                    # after every round, so a run cut short still leaves its figures
                    results = [{"mode": m, "clients": c, "rounds_done": r + 1, **summarize(runs[(m, c)])}
                               for c in clients for m in MODES]
                    _write_json(args, results)
    except (CommandError, ModelLoadError, ServeError, ValueError) as exc:
        print(f"triton_bench: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("triton_bench: interrupted; the server was stopped" + (f", figures so far in {args.json}" if args.json else ""),
              file=sys.stderr)
        return 130
    print_table(results)
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _write_json(args, results: list[dict]) -> None:
    if not args.json:
        return
    from .atomic import write_json

    write_json(args.json, {"command": " ".join(sys.argv), "cpu": cpu_model(), "model": str(args.model),
                           "backend": args.backend, "threads": args.threads, "crops_per_request": args.crops,
                           "requests_per_client": args.requests, "rounds": args.rounds,
                           "queue_delay_us": args.queue_delay_us, "protocol": args.protocol, "results": results})


def print_table(results: list[dict]) -> None:
    base = {r["clients"]: r["crops_per_s"] for r in results if r["mode"] == "in-process"}
    nobatch = {r["clients"]: r["crops_per_s"] for r in results if r["mode"] == "triton-nobatch"}
    print(f"\n| clients | mode | median ms | p90 ms | p99 ms | crops/s | vs in-process | vs no batching | crops per model run |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        c = r["clients"]
        vs_nb = f"{r['crops_per_s'] / nobatch[c]:.2f}x" if r["mode"] == "triton" else ""
        per_run = f"{r['crops_per_execution']:.1f}" if "crops_per_execution" in r else ""
        print(f"| {c} | {r['mode']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['crops_per_s']:.1f} | {r['crops_per_s'] / base[c]:.2f}x | {vs_nb} | {per_run} |")


if __name__ == "__main__":
    sys.exit(main())
