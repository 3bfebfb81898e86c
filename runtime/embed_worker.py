"""Embedding off the pipeline's main thread, batched across frames, with a fixed lag.

Why: on a few CPU cores the re-ID network is the largest stage, and called once per frame it runs at
batch 1, where a CPU backend does the least work per second (batch 4 is about 1.5x the images/s of
batch 1 for ONNX Runtime's CPU-INT8 file).  The worker embeds the crops of frame ``n`` while the main
thread matches and writes frame ``n`` and the front end detects frame ``n + 1``; crops that queue up
while it is busy go into one batch.

Why a fixed lag and not "whenever it is ready": results are handed back exactly ``lag`` pipeline steps
after their crops were taken (waiting if the worker is behind), so a run's tracks, identities and
events do not depend on thread timing: the same input gives the same output every time.  ``lag=0`` runs
each job inline, on the caller's thread, as a plain synchronous call.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["EmbeddingJob", "EmbeddingWorker"]


@dataclass
class EmbeddingJob:
    """Crops taken at one pipeline step; ``context`` is the caller's (tracks, frame index, ...)."""

    step: int
    crops: Sequence[np.ndarray]
    modalities: Sequence[str]
    context: Any = None
    embeddings: np.ndarray | None = None
    done: threading.Event = field(default_factory=threading.Event)


class EmbeddingWorker:
    """Runs ``embedder.embed`` on a background thread.

    ``submit(step, crops, modalities, context)`` queues one step's crops; ``ready(step)`` returns, in
    submission order, every job taken at ``step - lag`` or earlier, waiting for any not finished yet.
    ``busy_seconds`` is the time spent inside ``embed`` (the pipeline's "embed" stage).
    """

    def __init__(self, embedder, *, lag: int = 2, max_batch: int = 8):
        if int(lag) < 0:
            raise ValueError(f"the embedding lag must be >= 0 frames, got {lag}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.embedder, self.lag, self.max_batch = embedder, int(lag), int(max_batch)
        self.busy_seconds = 0.0
        self.batches = 0
        self._pending: deque[EmbeddingJob] = deque()   # submitted, not yet handed back (submission order)
        self._queue: deque[EmbeddingJob] = deque()     # submitted, not yet started by the thread
        self._cond = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self.lag > 0:
            self._thread = threading.Thread(target=self._run, name="embed", daemon=True)
            self._thread.start()

    # -- caller's side -------------------------------------------------------------------------------
    def submit(self, step: int, crops: Sequence[np.ndarray], modalities: Sequence[str], context: Any = None) -> None:
        job = EmbeddingJob(int(step), list(crops), list(modalities), context)
        if not job.crops:
            return
        self._raise_if_failed()
        if self._thread is None:  # lag 0: synchronous
            self._embed([job])
        else:
            with self._cond:
                self._queue.append(job)
                self._cond.notify_all()
        self._pending.append(job)

    def ready(self, step: int) -> list[EmbeddingJob]:
        """Jobs submitted at ``step - lag`` or before, finished, oldest first."""
        out = []
        while self._pending and self._pending[0].step <= step - self.lag:
            job = self._pending.popleft()
            self._wait(job)
            out.append(job)
        return out

    def flush(self) -> list[EmbeddingJob]:
        """Every job not handed back yet, finished (at the end of a run)."""
        out = []
        while self._pending:
            job = self._pending.popleft()
            self._wait(job)
            out.append(job)
        return out

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _wait(self, job: EmbeddingJob) -> None:
        while not job.done.wait(0.1):
            self._raise_if_failed()
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError("the embedding thread stopped")
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- worker thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, crops = [], 0
                # whole jobs, oldest first, up to max_batch crops (a larger single job goes alone)
                while self._queue and (not batch or crops + len(self._queue[0].crops) <= self.max_batch):
                    job = self._queue.popleft()
                    batch.append(job)
                    crops += len(job.crops)
            try:
                self._embed(batch)
            except BaseException as exc:  # surfaced on the caller's thread by ready()/submit()
                self._error = exc
                for job in batch:
                    job.done.set()
                return

    def _embed(self, jobs: list[EmbeddingJob]) -> None:
        crops = [c for job in jobs for c in job.crops]
        modalities = [m for job in jobs for m in job.modalities]
        t0 = time.perf_counter()
        embeddings = self.embedder.embed(crops, modalities)
        self.busy_seconds += time.perf_counter() - t0
        self.batches += 1
        start = 0
        for job in jobs:
            job.embeddings = embeddings[start:start + len(job.crops)]
            start += len(job.crops)
            job.done.set()
