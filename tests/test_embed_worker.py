"""Asynchronous embedding (runtime/embed_worker.py): fixed lag, batching across frames, errors, and a
pipeline whose output does not depend on thread timing."""
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _tiny_model import build_tiny_embedder
from admpff.runtime import reid
from admpff.runtime.embed_worker import EmbeddingWorker
from admpff.runtime.embedder import load_embedder
from admpff.runtime.tracker import EmbeddingSchedule, Track

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vtest.avi"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason=f"real clip not found at {CLIP} (apt-get install opencv-doc)")


class SlowRecordingEmbedder:
    """Embeds a crop as its mean pixel value (so rows can be traced to crops); records batch sizes; the first
    call is held until ``release`` is set, so later jobs queue up behind it."""

    def __init__(self):
        self.batches: list[int] = []
        self.release = threading.Event()

    def embed(self, crops, modalities):
        if not self.batches:
            assert self.release.wait(10)
        self.batches.append(len(crops))
        return np.array([[float(c.mean()), float(m == "infrared")] for c, m in zip(crops, modalities)], np.float32)


def _crops(*values):
    return [np.full((8, 4, 3), v, np.uint8) for v in values]


def test_rows_come_back_exactly_lag_steps_later_and_in_order():
    emb = SlowRecordingEmbedder()
    emb.release.set()
    worker = EmbeddingWorker(emb, lag=2)
    try:
        worker.submit(0, _crops(1, 2), ["visible", "infrared"], "a")
        worker.submit(1, _crops(3), ["visible"], "b")
        assert worker.ready(0) == [] and worker.ready(1) == []   # not before the lag, even when finished
        (a,) = worker.ready(2)
        assert a.context == "a" and a.embeddings.tolist() == [[1.0, 0.0], [2.0, 1.0]]
        (b,) = worker.ready(3)
        assert b.context == "b" and b.embeddings.tolist() == [[3.0, 0.0]]
        assert worker.in_flight == 0
    finally:
        worker.close()


def test_jobs_that_queue_while_the_worker_is_busy_share_one_batch():
    emb = SlowRecordingEmbedder()
    worker = EmbeddingWorker(emb, lag=3, max_batch=8)
    try:
        worker.submit(0, _crops(1), ["visible"])          # taken at once, held by the embedder
        time.sleep(0.2)
        worker.submit(1, _crops(2, 3), ["visible"] * 2)   # these three jobs wait behind it ...
        worker.submit(2, _crops(4, 5, 6), ["visible"] * 3)
        worker.submit(3, _crops(7, 8, 9, 10), ["visible"] * 4)
        emb.release.set()
        jobs = worker.flush()
        # ... and go as one batch up to max_batch crops (2 + 3 = 5; adding 4 would pass 8), then the rest
        assert emb.batches == [1, 5, 4]
        assert [job.embeddings[:, 0].tolist() for job in jobs] == [[1], [2, 3], [4, 5, 6], [7, 8, 9, 10]]
    finally:
        worker.close()


def test_lag_zero_embeds_on_the_callers_thread():
    emb = SlowRecordingEmbedder()
    emb.release.set()
    worker = EmbeddingWorker(emb, lag=0)
    worker.submit(5, _crops(9), ["visible"])
    (job,) = worker.ready(5)
    assert job.embeddings[0, 0] == 9.0 and job.done.is_set() and worker._thread is None
    worker.close()


def test_an_embedder_error_reaches_the_caller():
    class Broken:
        def embed(self, crops, modalities):
            raise RuntimeError("the accelerator went away")

    worker = EmbeddingWorker(Broken(), lag=1)
    try:
        worker.submit(0, _crops(1), ["visible"])
        with pytest.raises(RuntimeError, match="accelerator went away"):
            worker.ready(1)
    finally:
        worker.close()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="lag"):
        EmbeddingWorker(object(), lag=-1)
    with pytest.raises(ValueError, match="max_batch"):
        EmbeddingWorker(object(), max_batch=0)


def test_a_track_waiting_for_its_row_is_not_scheduled_again():
    schedule = EmbeddingSchedule(every_n=1)
    track = Track(1, np.array([0, 0, 10, 20], np.float32), 0.9, 0, confirmed=True)
    assert schedule.reason(track, 0, (100, 100, 3)) == "new"
    track.embed_pending = True
    assert schedule.reason(track, 5, (100, 100, 3)) is None
    # the row lands with the box and frame its crop was taken at, not the track's box by then
    track.box = np.array([0, 0, 40, 80], np.float32)
    track.add_embedding(np.ones(4, np.float32), frame_index=3, box=np.array([0, 0, 10, 20], np.float32))
    assert not track.embed_pending and track.last_embed_frame == 3 and track.last_embed_area == 200.0
    assert schedule.reason(track, 5, (100, 100, 3)) == "periodic"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_embedder(tmp_path_factory.mktemp("m") / "tiny.onnx", checkpoint_sha256="embed-worker-test")


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


@needs_clip
def test_asynchronous_runs_give_the_same_events_every_time_and_embed_as_often_as_synchronous(model, tmp_path):
    runs = {}
    for name, lag in (("async1", 2), ("async2", 2), ("sync", 0)):
        out = tmp_path / name
        rc = reid.main(["--model", str(model), "--source", f"lobby={CLIP}", "--out", str(out), "--max-frames", "40",
                        "--detector", "hog", "--embed-lag", str(lag), "--no-video", "--quiet"])
        assert rc == 0
        runs[name] = (_events(out), json.loads((out / "summary.json").read_text()))
    assert runs["async1"][0] == runs["async2"][0], "thread timing changed what the run reported"
    assert runs["async1"][0], "people are tracked in the first 40 frames"
    # the lag delays rows by two frames; it neither drops nor duplicates embeddings by much
    sync_n, async_n = runs["sync"][1]["embeddings"], runs["async1"][1]["embeddings"]
    assert abs(sync_n - async_n) <= max(2, sync_n // 5), (sync_n, async_n)


def test_negative_embed_lag_is_one_line_exit_2(model, tmp_path, capsys):
    rc = reid.main(["--model", str(model), "--source", f"lobby={CLIP}", "--out", str(tmp_path / "o"),
                    "--embed-lag", "-1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--embed-lag" in err[0]
