"""IdentitySampler (HcTri's cross-modality sampler): batch structure, determinism, distributed shares."""
import numpy as np
import pytest

from admpff.training.sampler import IdentitySampler, SamplerError


def labels(seed=0, ids=12):
    """Uneven visible / infrared counts per identity (more visible images, as in SYSU-MM01)."""
    rng = np.random.default_rng(seed)
    vis = np.concatenate([np.full(rng.integers(3, 9), i) for i in range(ids)])
    ir = np.concatenate([np.full(rng.integers(1, 5), i) for i in range(ids)])
    return rng.permutation(vis), rng.permutation(ir)


def test_each_batch_has_p_distinct_ids_with_k_visible_and_k_infrared_matching_labels():
    vis, ir = labels()
    p, k = 6, 4
    sampler = IdentitySampler(vis, ir, p, k, seed=3)
    batches = list(sampler)
    assert len(batches) == int(max(len(vis), len(ir)) / (p * k)) + 1 == len(sampler)
    for batch in batches:
        assert len(batch) == p * k
        v_idx = np.array([b[0] for b in batch])
        t_idx = np.array([b[1] for b in batch])
        v_lab, t_lab = vis[v_idx], ir[t_idx]
        assert np.array_equal(v_lab, t_lab)                       # pair i: same identity in both modalities
        ids, counts = np.unique(v_lab, return_counts=True)
        assert len(ids) == p and (counts == k).all()              # P distinct ids, K each
        # HcTri layout: identity blocks of K consecutive samples, same order for both modalities
        assert all(len(set(v_lab[i * k:(i + 1) * k])) == 1 for i in range(p))
        assert len({b[2] for b in batch}) == p * k                # one augmentation seed per sample


def test_deterministic_given_seed_and_epoch():
    vis, ir = labels()
    a = IdentitySampler(vis, ir, 4, 2, seed=7)
    b = IdentitySampler(vis, ir, 4, 2, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)                  # a new epoch draws new batches
    b.set_epoch(1)
    assert list(a) == list(b)                  # ... that depend only on (seed, epoch): resume replays them
    c = IdentitySampler(vis, ir, 4, 2, seed=8, epoch=1)
    assert list(c) != list(a)


def test_distributed_shares_are_disjoint_equal_and_cover_the_epoch():
    vis, ir = labels(ids=10)
    world = 3
    single = IdentitySampler(vis, ir, 4, 2, seed=1, epoch=2, num_replicas=world, rank=0)
    everything = single.epoch_batches()
    assert len(everything) % world == 0 and len(everything) >= single.batches_per_epoch
    shares = [list(IdentitySampler(vis, ir, 4, 2, seed=1, epoch=2, num_replicas=world, rank=r))
              for r in range(world)]
    assert len({len(s) for s in shares}) == 1                     # DDP needs equal step counts
    positions = [[everything.index(b) for b in s] for s in shares]
    flat = sorted(i for pos in positions for i in pos)
    assert flat == list(range(len(everything)))                   # disjoint and complete
    assert positions[1] == list(range(1, len(everything), world))
    # one process sees the same stream (before padding) as the union of the shares
    alone = IdentitySampler(vis, ir, 4, 2, seed=1, epoch=2)
    assert list(alone) == everything[:len(alone)]


def test_max_batches_caps_the_epoch():
    vis, ir = labels()
    sampler = IdentitySampler(vis, ir, 4, 2, max_batches=3)
    assert len(sampler) == 3 and len(list(sampler)) == 3


def test_identity_missing_in_one_modality_or_too_few_ids_is_an_error():
    with pytest.raises(SamplerError, match="both modalities"):
        IdentitySampler([0, 0, 1, 2], [0, 1], 2, 2)
    with pytest.raises(SamplerError, match="only 2 training identities"):
        IdentitySampler([0, 1], [0, 1], 3, 2)
    with pytest.raises(SamplerError):
        IdentitySampler([], [], 2, 2)
