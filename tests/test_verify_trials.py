"""The verification mAP follows SYSU-MM01's protocol: the mean over the first N random single-shot galleries,
each gallery image read and embedded once."""
import numpy as np
import pytest

from admpff.export import verify_data
from admpff.export.verify import retrieval_map
from admpff.runtime.contract import InputContract
from admpff.training.datasets.synthetic import write_sysu
from admpff.training.datasets.sysu import SYSUMM01


class ColourEmbedder:
    """A fixed, deterministic embedding (per-row mean colours): enough to rank crops, and countable."""

    def __init__(self):
        self.embedded = 0

    def embed_batch(self, images, modality):
        self.embedded += len(images)
        rows = images.reshape(len(images), 3, 8, -1).mean(axis=3).reshape(len(images), -1)
        rows = rows - rows.mean(axis=1, keepdims=True)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu-trials")
    write_sysu(root, num_ids=12, images_per_cam=3, seed=2)
    return root


def test_several_gallery_trials_are_their_union_and_the_map_is_their_mean(sysu):
    contract = InputContract(height=64, width=32)
    data = verify_data.load_retrieval_data(f"sysu:{sysu}", contract, trials=3)
    ds = SYSUMM01(str(sysu))
    assert len(data.gallery_trials) == 3
    for trial, idx in enumerate(data.gallery_trials):
        gallery = ds.gallery("all", trial=trial)
        assert list(data.gallery_pids[idx]) == list(gallery.pids)
        assert list(data.gallery_camids[idx]) == list(gallery.camids)
    union = {p for t in range(3) for p in ds.gallery("all", trial=t).paths}
    assert len(data.gallery_images) == len(union) < sum(len(ds.gallery("all", trial=t).paths) for t in range(3))

    per_trial = []
    for trial in range(3):
        one = verify_data.load_retrieval_data(f"sysu:{sysu}", contract)  # trial 0's gallery ...
        if trial:                                                       # ... or another trial's, as one gallery
            idx = data.gallery_trials[trial]
            one.gallery_images, one.gallery_pids = data.gallery_images[idx], data.gallery_pids[idx]
            one.gallery_camids, one.gallery_modality = data.gallery_camids[idx], data.gallery_modality[idx]
        per_trial.append(retrieval_map(ColourEmbedder(), one))
    embedder = ColourEmbedder()
    assert retrieval_map(embedder, data) == pytest.approx(np.mean(per_trial), abs=1e-9)
    assert len(set(np.round(per_trial, 6))) > 1, "the galleries differ, so their mAPs do"
    assert embedder.embedded == len(data.query_images) + len(union)
