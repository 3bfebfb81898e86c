"""The multi-granularity joint (MGJ) loss of ADMPFF-Net, eq. (4)-(10).

``HeteroCenterTripletLoss`` follows HcTri (Liu et al.) but groups features into centres explicitly by
(identity, modality) instead of relying on the sampler's chunk order.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from admpff.runtime.contract import INFRARED, VISIBLE


class MissingModalityError(ValueError):
    """An identity in the batch has images of only one modality, so it has no cross-modal centre."""


class HeteroCenterTripletLoss(nn.Module):
    """Eq. (7): triplet loss on per-(identity, modality) feature centres.

    For each centre (anchor): positive = the same identity's centre in the other modality; negative =
    the nearest centre of any other identity, in either modality; loss = mean over anchors of
    relu(margin + d(anchor, positive) - d(anchor, negative)), Euclidean distances.

    ``norm_feat`` (off in HcTri and the paper) L2-normalises each feature before the centres are taken,
    as fast-reid's triplet ``NORM_FEAT`` option does.  From random weights the modality gap makes every
    cross-modal centre farther than some other identity's, and with raw features the cheapest way down
    is to shrink every feature to zero (BatchNorm biases go negative, the ReLU outputs die); unit-length
    features can only lower the loss by bringing the modalities together.
    """

    def __init__(self, margin: float = 0.3, norm_feat: bool = False):
        super().__init__()
        self.margin = margin
        self.norm_feat = bool(norm_feat)

    def centres(self, features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor):
        """Mean feature per (identity, modality): returns centres [2P, d], their labels and modalities."""
        ids = torch.unique(labels)
        centres, centre_labels, centre_mods = [], [], []
        for mod in (VISIBLE, INFRARED):
            for pid in ids:
                mask = (labels == pid) & (modality == mod)
                if not bool(mask.any()):
                    name = "visible" if mod == VISIBLE else "infrared"
                    raise MissingModalityError(
                        f"identity {int(pid)} has no {name} image in this batch: the hetero-center triplet loss "
                        "needs every identity in both modalities (use the cross-modal identity sampler)")
                centres.append(features[mask].mean(0))
                centre_labels.append(pid)
                centre_mods.append(mod)
        return torch.stack(centres), torch.stack(centre_labels), torch.tensor(centre_mods, device=features.device)

    def forward(self, features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        if self.norm_feat:
            features = F.normalize(features, p=2, dim=1)
        centres, c_labels, c_mods = self.centres(features, labels, modality)
        if len(torch.unique(c_labels)) < 2:
            raise ValueError("the hetero-center triplet loss needs at least two identities in the batch")
        # Euclidean distance as HcTri: sqrt(clamp(d^2, 1e-12)), stable gradient at zero.
        sq = centres.pow(2).sum(1, keepdim=True)
        d2 = sq + sq.t() - 2.0 * centres @ centres.t()
        dist = d2.clamp(min=1e-12).sqrt()
        same_id = c_labels[:, None] == c_labels[None, :]
        other_mod = c_mods[:, None] != c_mods[None, :]
        positive = (dist * (same_id & other_mod)).sum(1)  # exactly one cross-modal centre per identity
        negative = dist.masked_fill(same_id, float("inf")).min(1).values
        return F.relu(self.margin + positive - negative).mean()


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Eq. (4): cross-entropy with label smoothing (epsilon 0.1)."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


class MGJLoss(nn.Module):
    """Eq. (8)-(10): L = L_id_en + L_tri_en + alpha * L_mGFD3 + beta * L_mGFD6.

    L_mGFD3 = sum_i (L_tri3_i + L_id3_i) + L_id3_all + L_tri3_all, and likewise for the six stripes.
    ``forward`` returns the total and every named term (unweighted), so training can log them.
    Paper values: SYSU-MM01 alpha = beta = 1; RegDB alpha = 3, beta = 6.  ``triplet_weight`` scales every
    triplet term inside the sums (1 in the paper); the logged terms stay unweighted.  ``triplet_norm_feat``
    is :class:`HeteroCenterTripletLoss`'s ``norm_feat`` (off in the paper; on for training from random weights).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, margin: float = 0.3, label_smoothing: float = 0.1,
                 triplet_weight: float = 1.0, triplet_norm_feat: bool = False):
        super().__init__()
        if triplet_weight < 0:
            raise ValueError(f"triplet_weight must be >= 0, not {triplet_weight}")
        self.alpha, self.beta, self.label_smoothing = alpha, beta, label_smoothing
        self.triplet_weight = triplet_weight
        self.triplet = HeteroCenterTripletLoss(margin, norm_feat=triplet_norm_feat)

    def forward(self, output: dict, labels: torch.Tensor, modality: torch.Tensor):
        features, logits = output["features"], output["logits"]
        terms: dict[str, torch.Tensor] = {}
        for name in features:
            terms[f"id/{name}"] = identity_loss(logits[name], labels, self.label_smoothing)
            terms[f"tri/{name}"] = self.triplet(features[name], labels, modality)
        branch = {}
        for b in ("p3", "p6"):
            names = [n for n in features if n.startswith(b + ".")]
            branch[b] = sum(terms[f"id/{n}"] + self.triplet_weight * terms[f"tri/{n}"] for n in names)
        terms["mGFD3"], terms["mGFD6"] = branch["p3"], branch["p6"]
        terms["en"] = terms["id/en"] + self.triplet_weight * terms["tri/en"]
        total = terms["en"] + self.alpha * terms["mGFD3"] + self.beta * terms["mGFD6"]
        return total, terms


#: eq. (10) weights from Table 3 of the paper
PAPER_LOSS_WEIGHTS = {"sysu": (1.0, 1.0), "regdb": (3.0, 6.0)}
