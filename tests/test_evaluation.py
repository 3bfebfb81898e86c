"""Evaluation metrics on hand-built distance matrices, and against a verbatim copy of AGW's code."""
import os

import numpy as np
import pytest

from admpff.training.evaluation import (compute_distmat, eval_regdb, eval_sysu, format_table,
                                        plot_cmc, summarize)


def arr(*values):
    return np.asarray(values)


# ---------------------------------------------------------------------------------------------
# eval_sysu: the cam3 / cam2 rule
# Gallery: g0 = pid1 cam2 (d .1), g1 = pid2 cam1 (d .2), g2 = pid1 cam4 (d .3).
#
# Query A: pid1, cam3 -> g0 removed (cam2), ranking [g1 pid2, g2 pid1]
#   identity-level: [2, 1] -> matches [0, 1] -> cmc [0, 1, 1, ...]
#   raw: [0, 1] -> AP = (1/2)/1 = 0.5, INP = 1/2
# Query B: pid1, cam6 -> nothing removed, ranking [pid1, pid2, pid1]
#   identity-level: [1, 2] -> cmc [1, 1, ...]
#   raw: [1, 0, 1] -> AP = (1/1 + 2/3)/2 = 5/6, INP = 2/3
# Both: cmc = [0.5, 1, ...], mAP = (1/2 + 5/6)/2 = 2/3, mINP = (1/2 + 2/3)/2 = 7/12
# ---------------------------------------------------------------------------------------------
CAM_G_PIDS, CAM_G_CAMS = arr(1, 2, 1), arr(2, 1, 4)
CAM_ROW = [0.1, 0.2, 0.3]


def test_cam3_query_loses_cam2_match():
    cmc, mAP, mINP = eval_sysu(np.array([CAM_ROW]), arr(1), CAM_G_PIDS, arr(3), CAM_G_CAMS, max_rank=3)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mAP == pytest.approx(0.5)
    assert mINP == pytest.approx(0.5)


def test_cam6_query_keeps_cam2_match():
    cmc, mAP, mINP = eval_sysu(np.array([CAM_ROW]), arr(1), CAM_G_PIDS, arr(6), CAM_G_CAMS, max_rank=3)
    np.testing.assert_allclose(cmc, [1, 1, 1])
    assert mAP == pytest.approx(5 / 6)
    assert mINP == pytest.approx(2 / 3)


def test_cam_rule_both_queries_together():
    cmc, mAP, mINP = eval_sysu(np.array([CAM_ROW, CAM_ROW]), arr(1, 1), CAM_G_PIDS, arr(3, 6), CAM_G_CAMS,
                               max_rank=3)
    assert cmc.dtype == np.float32 and cmc.shape == (3,)
    np.testing.assert_allclose(cmc, [0.5, 1, 1])
    assert mAP == pytest.approx(2 / 3)
    assert mINP == pytest.approx(7 / 12)


def test_cam2_removal_is_pid_agnostic():
    # A cam3 query whose impostor sits in cam2 at rank 1: removing it promotes the true match.
    # Gallery: pid5 cam2 (d .1), pid1 cam1 (d .2) -> after removal [pid1]: rank-1 hit, AP 1, INP 1.
    cmc, mAP, mINP = eval_sysu(np.array([[0.1, 0.2]]), arr(1), arr(5, 1), arr(3), arr(2, 1), max_rank=2)
    np.testing.assert_allclose(cmc, [1, 1])
    assert mAP == pytest.approx(1.0) and mINP == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Identity de-duplication: query pid1 cam6; ranked gallery pids [2, 2, 1, 3] (all cam1).
#   image-level matches [0, 0, 1, 0] -> rank-2 = 0, rank-3 = 1   (what eval_regdb reports)
#   identity-level [2, 1, 3] -> matches [0, 1, 0] -> rank-2 = 1  (what eval_sysu reports)
#   AP = (1/3)/1 = 1/3, INP = 1/3 for both
# ---------------------------------------------------------------------------------------------
DEDUP_D = np.array([[0.1, 0.2, 0.3, 0.4]])
DEDUP_G = arr(2, 2, 1, 3)


def test_identity_level_cmc_differs_from_image_level():
    cmc, mAP, mINP = eval_sysu(DEDUP_D, arr(1), DEDUP_G, arr(6), arr(1, 1, 1, 1), max_rank=4)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    assert mAP == pytest.approx(1 / 3) and mINP == pytest.approx(1 / 3)

    cmc_img, mAP_img, mINP_img = eval_regdb(DEDUP_D, arr(1), DEDUP_G, max_rank=4)
    np.testing.assert_allclose(cmc_img, [0, 0, 1, 1])
    assert mAP_img == pytest.approx(1 / 3) and mINP_img == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------
# A query without any true match is left out of the denominator.
#   q0: pid1 cam6, gallery [pid1 d .2, pid2 d .1] -> ranked [2, 1] -> cmc [0, 1], AP 1/2, INP 1/2
#   q1: pid9 (absent) -> skipped; cmc stays [0, 1] (would be [0, .5] if counted), mAP .5, mINP .5
# ---------------------------------------------------------------------------------------------
def test_query_without_match_is_excluded():
    d = np.array([[0.2, 0.1], [0.3, 0.4]])
    cmc, mAP, mINP = eval_sysu(d, arr(1, 9), arr(1, 2), arr(6, 6), arr(1, 1), max_rank=2)
    np.testing.assert_allclose(cmc, [0, 1])
    assert mAP == pytest.approx(0.5) and mINP == pytest.approx(0.5)


def test_query_whose_only_match_is_removed_is_excluded():
    # q0 as above; q1: pid3 cam3 whose only gallery image is cam2 -> invalid after removal.
    d = np.array([[0.2, 0.1, 0.5], [0.2, 0.1, 0.5]])
    cmc, mAP, _ = eval_sysu(d, arr(1, 3), arr(1, 2, 3), arr(6, 3), arr(1, 1, 2), max_rank=2)
    np.testing.assert_allclose(cmc, [0, 1])
    assert mAP == pytest.approx(0.5)


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query identity"):
        eval_sysu(np.array([[0.1]]), arr(1), arr(1), arr(3), arr(2))
    with pytest.raises(ValueError, match="no query identity"):
        eval_regdb(np.array([[0.1]]), arr(1), arr(2))


def test_short_gallery_is_padded_with_last_value():
    # Two gallery identities but max_rank 5: identity-level curve [0, 1] padded to [0, 1, 1, 1, 1].
    cmc, _, _ = eval_sysu(np.array([[0.1, 0.2]]), arr(1), arr(2, 1), arr(6), arr(1, 4), max_rank=5)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])
    cmc, _, _ = eval_regdb(np.array([[0.1, 0.2]]), arr(1), arr(2, 1), max_rank=5)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="does not match"):
        eval_regdb(np.zeros((2, 3)), arr(1), arr(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# eval_regdb with several positives.
#   q0 pid1, ranked pids [1, 2, 1, 3, 1] -> matches [1,0,1,0,1]
#      AP = (1/1 + 2/3 + 3/5)/3 = 0.755...; INP = 3/5; cmc [1,1,1,1,1]
#   q1 pid2, same ranking -> matches [0,1,0,0,0]: AP = 1/2, INP = 1/2, cmc [0,1,1,1,1]
#   mean: cmc [.5,1,1,1,1], mAP = (0.7556 + .5)/2, mINP = (.6 + .5)/2 = .55
# ---------------------------------------------------------------------------------------------
def test_eval_regdb_hand_example():
    row = [0.1, 0.2, 0.3, 0.4, 0.5]
    cmc, mAP, mINP = eval_regdb(np.array([row, row]), arr(1, 2), arr(1, 2, 1, 3, 1), max_rank=5)
    np.testing.assert_allclose(cmc, [0.5, 1, 1, 1, 1])
    ap0 = (1 + 2 / 3 + 3 / 5) / 3
    assert mAP == pytest.approx((ap0 + 0.5) / 2)
    assert mINP == pytest.approx(0.55)


# ---------------------------------------------------------------------------------------------
# Cross-check against AGW's eval_metrics.py (copied verbatim in spirit; only prints dropped).
# ---------------------------------------------------------------------------------------------
def agw_eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1)
    pred_label = g_pids[indices]
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    new_all_cmc, all_AP, all_INP = [], [], []
    num_valid_q = 0.
    for q_idx in range(num_q):
        q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
        order = indices[q_idx]
        remove = (q_camid == 3) & (g_camids[order] == 2)
        keep = np.invert(remove)
        new_cmc = pred_label[q_idx][keep]
        new_index = np.unique(new_cmc, return_index=True)[1]
        new_cmc = [new_cmc[index] for index in sorted(new_index)]
        new_match = (new_cmc == q_pid).astype(np.int32)
        new_cmc = new_match.cumsum()
        new_all_cmc.append(new_cmc[:max_rank])
        orig_cmc = matches[q_idx][keep]
        if not np.any(orig_cmc):
            continue
        cmc = orig_cmc.cumsum()
        pos_idx = np.where(orig_cmc == 1)
        pos_max_idx = np.max(pos_idx)
        all_INP.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        num_valid_q += 1.
        num_rel = orig_cmc.sum()
        tmp_cmc = orig_cmc.cumsum()
        tmp_cmc = [x / (i + 1.) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * orig_cmc
        all_AP.append(tmp_cmc.sum() / num_rel)
    new_all_cmc = np.asarray(new_all_cmc).astype(np.float32).sum(0) / num_valid_q
    return new_all_cmc, np.mean(all_AP), np.mean(all_INP)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_agw_on_random_sysu_like_data(seed):
    rng = np.random.default_rng(seed)
    num_ids = 30
    # Gallery: one image per id per RGB camera (single-shot), some ids missing some cameras.
    g = [(pid, cam) for pid in range(num_ids) for cam in (1, 2, 4, 5) if rng.random() < 0.8]
    g_pids, g_cams = np.array([p for p, _ in g]), np.array([c for _, c in g])
    q_pids = rng.integers(0, num_ids + 3, size=40)  # a few ids absent from the gallery
    q_cams = rng.choice([3, 6], size=40)
    distmat = rng.random((40, len(g))).astype(np.float32)
    ours = eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams)
    ref = agw_eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    assert ours[1] == pytest.approx(ref[1]) and ours[2] == pytest.approx(ref[2])


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def test_compute_distmat_is_negative_cosine():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = np.array([[1.0, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(compute_distmat(q, g), [[-1.0, -0.6], [0.0, -0.8]], rtol=1e-6)
    with pytest.raises(ValueError):
        compute_distmat(np.zeros((1, 3)), np.zeros((1, 4)))


def test_summarize_and_format_table():
    cmc = np.linspace(0.5, 1.0, 20).astype(np.float32)
    summary = summarize([(cmc, 0.4, 0.2), (cmc, 0.6, 0.4)])
    assert summary["rank1"] == pytest.approx(50.0)
    assert summary["rank20"] == pytest.approx(100.0)
    assert summary["mAP"] == pytest.approx(50.0) and summary["mINP"] == pytest.approx(30.0)
    assert summary["trials"] == 2 and len(summary["cmc"]) == 20
    table = format_table({"sysu all": summary, "partial": {"rank1": 12.345}})
    lines = table.splitlines()
    assert "R1" in lines[0] and "mINP" in lines[0]
    assert "50.00" in lines[2] and "12.35" in lines[3] and "-" in lines[3]
    with pytest.raises(ValueError):
        summarize([])


def test_plot_cmc_writes_png_atomically(tmp_path):
    out = tmp_path / "plots" / "cmc.png"
    plot_cmc({"a": np.linspace(0.3, 0.9, 20), "b": np.linspace(20, 80, 20)}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out.parent) == ["cmc.png"]  # no temporary file left behind


def test_plot_cmc_ticks_are_integer_ranks(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def spy(self, *args, **kwargs):  # the figure as written, whatever plot_cmc returns
        saved.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    for length in (20, 7, 3):
        plot_cmc({"a": np.linspace(0.1, 0.9, length)}, tmp_path / f"cmc{length}.png")
        ticks = [t for t in saved[-1].axes[0].get_xticks() if 1 <= t <= length]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


# ---------------------------------------------------------------------------------------------
# RegDB: why a 1-epoch model scores rank-20 below a random distance matrix (issue 10).
# ---------------------------------------------------------------------------------------------
def agw_eval_regdb(distmat, q_pids, g_pids, max_rank=20):
    """AGW's eval_regdb, restated (same steps, same argsort)."""
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, all_INP, num_valid_q = [], [], [], 0.
    for q_idx in range(num_q):
        raw_cmc = matches[q_idx]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        pos_max_idx = np.max(np.where(raw_cmc == 1))
        all_INP.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.
        num_rel = raw_cmc.sum()
        tmp_cmc = np.asarray([x / (i + 1.) for i, x in enumerate(raw_cmc.cumsum())]) * raw_cmc
        all_AP.append(tmp_cmc.sum() / num_rel)
    return np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q, np.mean(all_AP), np.mean(all_INP)


@pytest.mark.parametrize("seed", [0, 1])
def test_eval_regdb_matches_agw_including_ties(seed):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = np.repeat(np.arange(20), 10), np.repeat(np.arange(20), 10)
    distmat = rng.integers(0, 6, (200, 200)).astype(np.float32)  # many exact ties
    ours, ref = eval_regdb(distmat, q_pids, g_pids), agw_eval_regdb(distmat, q_pids, g_pids)
    np.testing.assert_array_equal(ours[0], ref[0])
    assert ours[1] == pytest.approx(ref[1]) and ours[2] == pytest.approx(ref[2])


def test_random_distmat_is_not_the_chance_level_of_a_model():
    """Measured: 1 epoch of a ResNet-18 on generated RegDB (20 test ids x 10 images) gave rank-20 53.5%
    where a random distance matrix gives 66-70%, with no ties and no bug.  A random matrix draws each
    of a person's 10 gallery images independently, so one of them lands in the top 20 two times in
    three (1 - C(190,20)/C(200,20) = 0.660).  A model's features put a person's gallery images next to
    each other (same-modality images of one person look alike long before cross-modal matching is
    learnt): they enter the ranking together, and its chance level is that of ranking identities,
    far lower.  Both facts are checked here, so a real bug would not hide behind them."""
    from math import comb

    rng = np.random.default_rng(0)
    q_pids = g_pids = np.repeat(np.arange(20), 10)
    random_r20 = np.mean([eval_regdb(rng.random((200, 200)), q_pids, g_pids)[0][19] for _ in range(5)])
    assert random_r20 == pytest.approx(1 - comb(190, 20) / comb(200, 20), abs=0.03)

    # features clustered by identity, with NO cross-modal correspondence (query and gallery codes unrelated)
    r20 = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        q_code, g_code = rng.standard_normal((20, 64)), rng.standard_normal((20, 64))
        q = q_code[q_pids] + 0.2 * rng.standard_normal((200, 64))
        g = g_code[g_pids] + 0.2 * rng.standard_normal((200, 64))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        r20.append(eval_regdb(compute_distmat(q, g), q_pids, g_pids)[0][19])
    assert np.mean(r20) < random_r20 - 0.25, (np.mean(r20), random_r20)  # chance of a clustered model: far lower


def test_regdb_feature_path_ranks_a_perfect_feature_first(tmp_path):
    """The RegDB protocol end to end (split files, image cache, modality routing, pid alignment) with
    a "model" whose feature is exactly the identity painted into the images: rank-1 must be 100%."""
    import cv2
    import torch

    from admpff.runtime.contract import InputContract
    from admpff.training.datasets.regdb import RegDB
    from admpff.training.datasets.synthetic import write_regdb
    from admpff.training.features import evaluate_regdb

    root = tmp_path / "regdb"
    write_regdb(root, num_ids=8, images_per_modality=3, seed=0, trials=1)
    for name in ("test_visible_1.txt", "test_thermal_1.txt"):
        for line in (root / "idx" / name).read_text().split("\n"):
            if line.strip():
                rel, label = line.split()
                cv2.imwrite(str(root / rel), np.full((64, 32, 3), 20 + 25 * int(label), np.uint8))

    class IdentityFromBrightness(torch.nn.Module):
        def forward(self, x, modality):
            angle = x.mean(dim=(1, 2, 3))  # one brightness per identity (normalised), the same in both modalities
            return torch.nn.functional.normalize(torch.stack([torch.cos(angle), torch.sin(angle)], 1), dim=1)

    contract = InputContract(height=64, width=32)
    for tvsearch in (False, True):
        result = evaluate_regdb(IdentityFromBrightness(), RegDB(str(root), 1), tvsearch=tvsearch,
                                cache_dir=str(tmp_path / "cache"), contract=contract, progress=False)
        assert result["summary"]["rank1"] == 100.0 and result["summary"]["mAP"] == pytest.approx(100.0)
