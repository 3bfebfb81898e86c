"""Hetero-center triplet loss against a hand-computed example; MGJ weighting."""
import math

import pytest
import torch

from admpff.training.losses import HeteroCenterTripletLoss, MGJLoss, MissingModalityError, identity_loss


def hand_example():
    # id 0: visible (0,0),(2,0) -> centre (1,0); infrared (1,2) -> (1,2)
    # id 1: visible (4,0) -> (4,0);             infrared (4,4),(4,2) -> (4,3)
    feats = torch.tensor([[0., 0.], [2., 0.], [1., 2.], [4., 0.], [4., 4.], [4., 2.]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    modality = torch.tensor([0, 0, 1, 0, 1, 1])
    return feats, labels, modality


def test_hetero_center_triplet_by_hand():
    # anchor c0v: pos d(c0v,c0i)=2, neg min(d(c0v,c1v)=3, d(c0v,c1i)=sqrt18) = 3   -> relu(2.3-3) = 0
    # anchor c0i: pos 2, neg min(sqrt13, sqrt10) = sqrt10                          -> relu(2.3-3.162) = 0
    # anchor c1v: pos d(c1v,c1i)=3, neg min(3, sqrt13) = 3                         -> 0.3
    # anchor c1i: pos 3, neg min(sqrt18, sqrt10) = sqrt10                          -> 3.3 - sqrt10
    expected = (0.3 + 3.3 - math.sqrt(10)) / 4
    loss = HeteroCenterTripletLoss(margin=0.3)(*hand_example())
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_grouping_is_by_label_and_modality_not_order():
    feats, labels, modality = hand_example()
    perm = torch.tensor([5, 2, 0, 3, 1, 4])
    loss_fn = HeteroCenterTripletLoss(0.3)
    assert loss_fn(feats[perm], labels[perm], modality[perm]).item() == pytest.approx(
        loss_fn(feats, labels, modality).item(), abs=1e-6)


def test_identity_missing_a_modality_is_a_clear_error():
    feats, labels, modality = hand_example()
    with pytest.raises(MissingModalityError, match="identity 1 has no infrared image"):
        HeteroCenterTripletLoss()(feats[:4], labels[:4], modality[:4])


def test_identity_loss_label_smoothing():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    p = torch.softmax(logits, 1)[0]
    # eq. (4) with eps 0.1 over 3 classes: target (1-eps)+eps/3 on the true class, eps/3 elsewhere
    q = torch.tensor([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert identity_loss(logits, torch.tensor([0])).item() == pytest.approx(-(q * p.log()).sum().item(), abs=1e-6)


def fake_output(seed=0):
    g = torch.Generator().manual_seed(seed)
    names = [f"p3.{i}" for i in range(3)] + ["p3.all"] + [f"p6.{i}" for i in range(6)] + ["p6.all", "en"]
    feats = {n: torch.randn(8, 4, generator=g) for n in names}
    logits = {n: torch.randn(8, 3, generator=g) for n in names}
    return {"features": feats, "logits": logits}


def test_mgj_weighting_and_terms():
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out = fake_output()
    total, terms = MGJLoss(alpha=3, beta=6)(out, labels, modality)
    m3 = sum(terms[f"id/p3.{i}"] + terms[f"tri/p3.{i}"] for i in [0, 1, 2, "all"])
    m6 = sum(terms[f"id/p6.{i}"] + terms[f"tri/p6.{i}"] for i in [*range(6), "all"])
    assert terms["mGFD3"].item() == pytest.approx(m3.item(), rel=1e-6)
    assert terms["mGFD6"].item() == pytest.approx(m6.item(), rel=1e-6)
    en = terms["id/en"] + terms["tri/en"]
    assert total.item() == pytest.approx((en + 3 * m3 + 6 * m6).item(), rel=1e-6)
    total1, _ = MGJLoss(alpha=1, beta=1)(out, labels, modality)
    assert total1.item() == pytest.approx((en + m3 + m6).item(), rel=1e-6)
    # --triplet-weight scales every triplet term; the logged terms stay unweighted
    half, half_terms = MGJLoss(alpha=3, beta=6, triplet_weight=0.5)(out, labels, modality)
    tri = {b: sum(terms[f"tri/{b}.{i}"] for i in stripes) for b, stripes in
           (("p3", [0, 1, 2, "all"]), ("p6", [*range(6), "all"]))}
    expected = en - 0.5 * terms["tri/en"] + 3 * (m3 - 0.5 * tri["p3"]) + 6 * (m6 - 0.5 * tri["p6"])
    assert half.item() == pytest.approx(expected.item(), rel=1e-6)
    assert half_terms["tri/p3.0"].item() == pytest.approx(terms["tri/p3.0"].item())
    ids_only, _ = MGJLoss(triplet_weight=0)(out, labels, modality)
    assert ids_only.item() == pytest.approx(sum(v for k, v in terms.items() if k.startswith("id/")).item(), rel=1e-6)
    with pytest.raises(ValueError, match="triplet_weight"):
        MGJLoss(triplet_weight=-1)


def test_norm_feat_measures_directions_so_shrinking_features_cannot_lower_it():
    raw, normed = HeteroCenterTripletLoss(0.3), HeteroCenterTripletLoss(0.3, norm_feat=True)
    # Random weights: the modality gap puts each identity's other-modality centre farther than another
    # identity's same-modality centre.  Raw features then lose loss by shrinking (the collapse) ...
    gap = torch.tensor([[1., 0.], [2., 0.], [1., 5.], [2., 5.]])
    ids, mods = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    assert raw(0.1 * gap, ids, mods).item() < 0.2 * raw(gap, ids, mods).item()
    # ... normalised features cannot: only closing the gap lowers it
    assert normed(0.1 * gap, ids, mods).item() == pytest.approx(normed(gap, ids, mods).item(), abs=1e-6)

    feats, labels, modality = hand_example()
    # normalised: the same loss at any scale, equal to the raw loss of the unit-length features
    assert normed(0.1 * feats + 0, labels, modality).item() == pytest.approx(normed(feats, labels, modality).item(), abs=1e-6)
    unit = torch.nn.functional.normalize(feats + torch.tensor([1e-3, 0.0]), dim=1)
    shifted = feats + torch.tensor([1e-3, 0.0])     # (0, 0) has no direction; move it off the origin
    assert normed(shifted, labels, modality).item() == pytest.approx(raw(unit, labels, modality).item(), abs=1e-6)
    # and the gradient has no component along the features (a global scale change is flat)
    x = shifted.clone().requires_grad_(True)
    normed(x, labels, modality).backward()
    assert abs((x.grad * x).sum().item()) < 1e-5
    # MGJLoss passes the option to every triplet term
    assert MGJLoss(triplet_norm_feat=True).triplet.norm_feat and not MGJLoss().triplet.norm_feat
