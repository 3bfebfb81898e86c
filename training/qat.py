"""Quantization-aware fine-tuning (QAT): INT8 that holds where post-training calibration does not.

    admpff-train --qat-from runs/sysu/last.pt --dataset sysu --data /data/SYSU-MM01 --out runs/sysu-qat
    admpff-train --resume runs/sysu-qat/last.pt          # a QAT run resumes like any other
    admpff-export runs/sysu-qat/last.pt --out models --int8 --calib-data crops/   # Q/DQ with the learned scales

The scheme is the TensorRT Q/DQ file's (``export/quantize.py``, ``export/qdq_check.py``): signed int8,
symmetric (zero point 0); every backbone convolution has its weights quantized per output channel
(axis 0, [-127, 127], scale = max|w| / 127 of the current weights) and its input per tensor
([-128, 127]); the identity input of every residual Add is quantized too, so TensorRT can fuse the Add into
the convolution before it; the embedding head (stripe pooling, 1x1 reductions, concat, L2 norm) stays
float.  Batch norms are folded into their convolutions first (frozen statistics, the usual QAT recipe):
the network that trains is the graph that is exported, node for node.  Then channels are equalized
(``equalize_channels``, exact in float: ReLU, max pool and residual Adds commute with a positive
per-channel factor) between the convolutions of each residual block and along the residual streams, so
that one per-tensor activation scale fits all the channels of a tensor.

Fake quantization is PyTorch's own (``torch.fake_quantize_per_tensor_affine`` /
``torch.fake_quantize_per_channel_affine`` in the exported graph, which the ONNX exporter turns into
QuantizeLinear/DequantizeLinear; the fused LSQ kernel while training).  Activation scales start from a
calibration on unaugmented training-split images (default ``mse``: per batch the clipping value with
the least int8 error; or a percentile) and are then learned (LSQ: straight-through rounding); weight
scales follow the weights.  The calibration pass runs the FP32 network, so its embeddings are the
targets of the fine-tuning: Adam lowers the cosine distance of the fake-quantized embedding of the same
images to them (``--qat-distill``), training the activation scales (rate relative to each scale) and the
folded-BN biases; the conv weights only with ``--backbone-lr-mult`` > 0 (Adam at 1e-4 wrecked the demo's
ResNet-50).  The MGJ loss (``--qat-mgj-weight`` > 0) switches to the ordinary augmented identity batches
with a frozen FP32 teacher (on a briefly trained model with folded BNs it moved the weights far from the
FP32 model even at lr 1e-5).  The float embedding head is frozen.  The checkpoint lists the training
images the run used (``qat.seen_images``) so that the export verifies on others.

Everything else is ordinary training (``engine.Trainer``): sampler, logs (``train_log.jsonl``,
TensorBoard), progress bars, atomic ``last.pt`` every epoch, exact ``--resume``.  The checkpoint is an
ordinary admpff checkpoint plus a ``qat`` entry (scheme, source checkpoint and its sha256,
calibration); :func:`build_qat_model` rebuilds the quantized network from it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from typing import Iterable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .engine import Trainer, TrainingError, build_scheduler

log = logging.getLogger(__name__)

QAT_FORMAT_VERSION = 2
ACT_QMIN, ACT_QMAX = -128, 127        # activations: signed int8, symmetric scale (amax / 127)
WEIGHT_QMAX = 127                     # weights: [-127, 127] (TensorRT's symmetric weight range)
CALIB_PERCENTILE = 99.999             # per-batch |x| percentile, averaged over the calibration batches
CALIB_METHOD = "mse"                  # default: per-batch least-error clipping value (mse_amax), averaged
EQUALIZE_ALPHA = 0.8                  # channel equalization strength (equalize_channels); 0 turns it off
SCHEME = {"dtype": "int8", "symmetric": True, "weights": "per-channel axis 0, [-127, 127]",
          "activations": "per-tensor, [-128, 127]", "residual_add": "identity input quantized",
          "head": "float", "batch_norm": "folded", "scales": "activations learned (LSQ), weights max|w|/127"}
QUANTIZED_PARTS = ("visible_stem", "infrared_stem", "shared", "branches")


# -- fake quantizers -------------------------------------------------------------------------------
class _Mode:
    FLOAT, CALIBRATE, QUANTIZE = "float", "calibrate", "quantize"


class ActivationQuantizer(nn.Module):
    """Per-tensor symmetric int8 fake quantization with a learned scale (LSQ).

    Modes: ``float`` (identity), ``calibrate`` (identity, records the |x| percentile of each batch) and
    ``quantize``.  When exporting (``torch.onnx.is_in_onnx_export()``) the same arithmetic is emitted as
    ``torch.fake_quantize_per_tensor_affine``, i.e. a QuantizeLinear/DequantizeLinear pair with this scale.
    """

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.mode = _Mode.FLOAT
        self.percentile = CALIB_PERCENTILE
        self._amax: list[float] = []

    def extra_repr(self) -> str:
        return f"mode={self.mode}, scale={float(self.scale.detach()):.4g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == _Mode.FLOAT:
            return x
        if self.mode == _Mode.CALIBRATE:
            self._amax.append(mse_amax(x) if self.percentile == "mse" else abs_percentile(x, self.percentile))
            return x
        if torch.onnx.is_in_onnx_export():
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale.detach().abs().clamp_min(1e-8)), 0,
                                                      ACT_QMIN, ACT_QMAX)
        if not (self.scale.requires_grad and torch.is_grad_enabled()):  # a frozen scale: the plain kernel
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale.detach().abs().clamp_min(1e-8)), 0,
                                                      ACT_QMIN, ACT_QMAX)
        # PyTorch's fused LSQ kernel (what torch.ao's _LearnableFakeQuantize calls): straight-through
        # rounding, the scale's gradient scaled by 1/sqrt(numel * 127); one op instead of five saved tensors.
        scale = self.scale.abs().clamp_min(1e-8).reshape(1)
        zero = torch.zeros(1, dtype=x.dtype, device=x.device)
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, ACT_QMIN, ACT_QMAX,
                                                               1.0 / math.sqrt(x[0].numel() * ACT_QMAX))

    def finish_calibration(self) -> None:
        if not self._amax:
            raise RuntimeError("a quantizer saw no data during calibration (is it on the embedding path?)")
        amax = max(sum(self._amax) / len(self._amax), 1e-6)
        with torch.no_grad():
            self.scale.fill_(amax / ACT_QMAX)
        self._amax = []


def abs_percentile(x: torch.Tensor, percentile: float) -> float:
    """The ``percentile`` of |x| over the whole tensor (100: the maximum), from its top-k (no sort, no sampling)."""
    flat = x.detach().abs().flatten().float()
    k = max(1, int(math.floor((flat.numel() - 1) * (1.0 - percentile / 100.0))) + 1)
    return float(flat.max() if k == 1 else torch.topk(flat, k, sorted=False).values.min())


def mse_amax(x: torch.Tensor, candidates: int = 24) -> float:
    """The clipping value of |x| that minimises the int8 quantization error of this batch: clipping error
    sum((|x| - c)^2) over the clipped values (exact, from the top 0.1%) plus rounding error (c / 127)^2 / 12
    per non-zero value kept (uniform rounding noise), over ``candidates`` values from the 99.9th
    percentile to the maximum."""
    flat = x.detach().abs().flatten().float()
    k = min(flat.numel(), max(64, flat.numel() // 1000))
    top = torch.topk(flat, k, sorted=True).values                      # descending
    kept = float((flat > 0).sum())
    ranks = torch.unique(torch.logspace(0, math.log10(k), candidates).long().clamp(1, k) - 1)
    clips = top[ranks]
    clip_err = ((top.unsqueeze(0) - clips.unsqueeze(1)).clamp_min(0) ** 2).sum(1)
    round_err = kept * (clips / ACT_QMAX) ** 2 / 12.0
    return float(clips[torch.argmin(clip_err + round_err)])


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scales (axis 0): max|w| / 127, never zero."""
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    return (amax / WEIGHT_QMAX).clamp_min(1e-12)


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Straight-through per-channel fake quantization of a conv weight onto [-127, 127] * scale."""
    scale = weight_scales(weight)
    zero = torch.zeros(scale.numel(), dtype=torch.int32, device=weight.device)
    # fused straight-through per-channel kernel; the scale is max|w|/127, so nothing is ever clipped
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX)


def weight_integers(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, per-channel float scale) exactly as the fake quantizer uses them."""
    scale = weight_scales(weight)
    q = torch.clamp(torch.round(weight.detach() / scale.view(-1, *([1] * (weight.dim() - 1)))),
                    -WEIGHT_QMAX, WEIGHT_QMAX)
    return q.to(torch.int8), scale


class QuantConv2d(nn.Module):
    """A (BN-folded) convolution with its input per-tensor and its weight per-channel fake-quantized."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.input_quantizer = ActivationQuantizer()
        self.quantize_weights = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x)
        if not self.quantize_weights:
            return self.conv(x)
        weight = self.conv.weight
        if torch.onnx.is_in_onnx_export():
            # Exactly the trained integers, computed before tracing so that they are constants: the weight
            # is on the grid already, so (-128, 127) (the range the exporter accepts) quantizes it back
            # losslessly, and export/qat_export.py stores it as int8.
            zero = torch.zeros(self._export_scale.numel(), dtype=torch.int32)
            weight = torch.fake_quantize_per_channel_affine(self._export_grid, self._export_scale, zero, 0, -128, 127)
        elif weight.requires_grad and torch.is_grad_enabled():
            weight = quantize_weight(weight)
        else:  # frozen or not training: quantize once per weight version (70M weights a pass on ResNet-50)
            key = (weight.data_ptr(), weight._version)
            if getattr(self, "_cached_key", None) != key:
                self._cached_weight, self._cached_key = quantize_weight(weight.detach()), key
            weight = self._cached_weight
        return self.conv._conv_forward(x, weight, self.conv.bias)

    def freeze_for_export(self) -> None:
        """Compute the int8 grid outside the ONNX trace (tensors made there are traced, not constants)."""
        q, scale = weight_integers(self.conv.weight)
        # Persistent buffers, not plain tensors: the exporter folds the Q/DQ of anything outside the
        # state dict into one float constant.  ``thaw_after_export`` removes them again.
        self.register_buffer("_export_grid", (q.float() * scale.view(-1, 1, 1, 1)).detach().clone())
        self.register_buffer("_export_scale", scale.detach().clone())

    def thaw_after_export(self) -> None:
        for name in ("_export_grid", "_export_scale"):
            self._buffers.pop(name, None)


# -- model transformation --------------------------------------------------------------------------
def _fold_batch_norms(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d among a module's children (torchvision's
    ResNet blocks, stems and downsample paths, the stripe reducers) into the convolution."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                setattr(parent, name_a, fuse_conv_bn_eval(a.eval(), b.eval()))
                setattr(parent, name_b, nn.Identity())
                folded += 1
    return folded


def _quantize_convs(module: nn.Module) -> int:
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, QuantConv2d(child))
                count += 1
    return count


def _quantize_residual_inputs(module: nn.Module) -> int:
    """torchvision's blocks add ``downsample(x)`` (or ``x``) to the convolution path: quantize that input."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    count = 0
    for block in module.modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            block.downsample = nn.Sequential(block.downsample or nn.Identity(), ActivationQuantizer())
            count += 1
    return count


def prepare_qat_model(model: nn.Module) -> nn.Module:
    """Fold BNs, then insert the fake quantizers (still in float mode) into an :class:`ADMPFFNet`, in place."""
    model.eval()
    _fold_batch_norms(model)
    for part in QUANTIZED_PARTS:
        sub = getattr(model, part)
        _quantize_residual_inputs(sub)
        _quantize_convs(sub)
    return model


def quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActivationQuantizer)]


def quantized_convs(model: nn.Module) -> list[QuantConv2d]:
    return [m for m in model.modules() if isinstance(m, QuantConv2d)]


def set_mode(model: nn.Module, mode: str) -> None:
    """``float`` (the BN-folded FP32 network), ``calibrate`` or ``quantize`` (INT8 fake quantization)."""
    for q in quantizers(model):
        q.mode = mode
    for conv in quantized_convs(model):
        conv.quantize_weights = mode == _Mode.QUANTIZE


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [q.scale for q in quantizers(model)]


def split_embed(model: nn.Module, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """``model.embed`` with each modality's stem run on its own images only: the same embedding per image,
    half the stem work, and a stem's calibration sees only the modality it serves (``embed`` runs both
    stems on every image to keep the exported graph static)."""
    from admpff.runtime.contract import INFRARED

    is_ir = modality == INFRARED
    stems = [(~is_ir, model.visible_stem), (is_ir, model.infrared_stem)]
    parts = [(mask, stem(images[mask])) for mask, stem in stems if bool(mask.any())]
    x = parts[0][1].new_empty((len(images),) + parts[0][1].shape[1:])
    for mask, out in parts:
        x[mask] = out
    feats = model._branch_features(model.shared(x))
    return F.normalize(torch.cat(feats["p3"] + feats["p6"] + feats["en"], dim=1), p=2, dim=1)


class EqualizationGroup(NamedTuple):
    """Channels that can be rescaled without changing the float network: the output channels of
    ``producers`` (weights and bias divided by s_c) feed, through ReLUs and residual Adds only, the input
    channels of ``consumers`` (weights multiplied by s_c); ``observed`` are the modules whose input or
    output (``side``) is that activation, where its per-channel range is measured."""
    name: str
    producers: list
    consumers: list
    observed: list          # [(module, "input" | "output")]


def _is_residual_block(module: nn.Module) -> bool:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return isinstance(module, (BasicBlock, Bottleneck))


def _residual_blocks(stage: nn.Module) -> list | None:
    """A ResNet stage's blocks, or None if ``stage`` is not a Sequential of residual blocks."""
    blocks = list(stage.children()) if isinstance(stage, nn.Sequential) else []
    return blocks if blocks and all(_is_residual_block(b) for b in blocks) else None


def _last_conv(block: nn.Module) -> QuantConv2d:
    return block.conv3 if hasattr(block, "conv3") else block.conv2


def _downsample_conv(block: nn.Module) -> QuantConv2d | None:
    """The projection conv of a block's shortcut (``prepare_qat_model`` wraps it: Sequential(Sequential(conv,
    folded BN), quantizer)); None for an identity shortcut."""
    inner = block.downsample[0] if isinstance(block.downsample, nn.Sequential) else None
    first = inner[0] if isinstance(inner, nn.Sequential) and len(inner) else None
    return first if isinstance(first, QuantConv2d) else None


def _identity_shortcut(block: nn.Module) -> bool:
    """The block adds its input itself (``prepare_qat_model`` wraps it: Sequential(Identity, quantizer))."""
    ds = block.downsample
    return ds is None or (isinstance(ds, nn.Sequential) and isinstance(ds[0], nn.Identity))


def _resnet_stem(stem: nn.Module) -> nn.Sequential | None:
    """A stem that is torchvision's stage 0 alone, once prepared (conv, folded BN, ReLU, max pool), or None."""
    children = list(stem.children()) if isinstance(stem, nn.Sequential) else []
    stage0 = children[0] if len(children) == 1 else None
    kinds = [type(m) for m in stage0.children()] if isinstance(stage0, nn.Sequential) else []
    return stage0 if kinds == [QuantConv2d, nn.Identity, nn.ReLU, nn.MaxPool2d] else None


def equalization_groups(model: nn.Module) -> list[EqualizationGroup]:
    """Every place of an :class:`ADMPFFNet` (after ``prepare_qat_model``) where channels can be equalized:

    * the residual streams: a stream starts at the stems' output (conv, ReLU, max pool: both commute with a
      positive per-channel factor; both stems get the same factors) or at a stage whose first block has a
      projection shortcut, and runs through every block of that stage (each block's output is the Add of
      its last conv and its shortcut) and on through the following stages whose first block has an
      identity shortcut, until projections read it.  One factor per channel for the whole stream: divided
      out of every conv that writes it, multiplied into every conv that reads it.  A stream that reaches
      the float head is skipped;
    * inside each residual block, the activation between two convolutions (Bottleneck conv1 -> conv2 ->
      conv3, BasicBlock conv1 -> conv2), which only a ReLU separates."""
    stage = {f"shared.{i}": s for i, s in enumerate(model.shared)}
    chains = {n: [f"branches.{n}.{i}" for i in range(len(b))] for n, b in model.branches.items()}
    stage.update({key: model.branches[n][i] for n, keys in chains.items() for i, key in enumerate(keys)})
    shared = [k for k in stage if k.startswith("shared.")]
    branch_firsts = [keys[0] for keys in chains.values() if keys]
    successors = {k: [shared[i + 1]] if i + 1 < len(shared) else branch_firsts for i, k in enumerate(shared)}
    successors.update({k: keys[i + 1:i + 2] for keys in chains.values() for i, k in enumerate(keys)})

    def extend(group: EqualizationGroup, keys: list[str]) -> bool:
        """Follow the stream into ``keys``; False where it cannot be equalized (it reaches the head)."""
        for key in keys:
            blocks = _residual_blocks(stage[key])
            if blocks is None or not all(_identity_shortcut(b) for b in blocks[1:]):
                return False
            if _downsample_conv(blocks[0]) is not None:          # a projection reads the stream: it ends here
                group.consumers.extend([blocks[0].conv1, _downsample_conv(blocks[0])])
                continue
            if not _identity_shortcut(blocks[0]):
                return False
            group.producers.extend(_last_conv(b) for b in blocks)
            group.consumers.extend(b.conv1 for b in blocks)
            group.observed.extend((b, "output") for b in blocks)
            if not extend(group, successors[key]):
                return False
        return bool(keys)

    groups = []
    first = shared[:1] or branch_firsts
    stems = [_resnet_stem(model.visible_stem), _resnet_stem(model.infrared_stem)]
    if all(s is not None for s in stems):
        group = EqualizationGroup("stream:stems", [s[0] for s in stems], [], [(s, "output") for s in stems])
        if extend(group, first):
            groups.append(group)
    for key in stage:
        blocks = _residual_blocks(stage[key])
        if not blocks or _downsample_conv(blocks[0]) is None or not all(_identity_shortcut(b) for b in blocks[1:]):
            continue
        group = EqualizationGroup(f"stream:{key}", [_downsample_conv(blocks[0])] + [_last_conv(b) for b in blocks],
                                  [b.conv1 for b in blocks[1:]],
                                  [(b, "output") for b in blocks] + [(blocks[0].downsample, "output")])
        if extend(group, successors[key]):
            groups.append(group)
    for part in QUANTIZED_PARTS:
        for name, block in getattr(model, part).named_modules(prefix=part):
            if not _is_residual_block(block):
                continue
            convs = [("conv1", block.conv1), ("conv2", block.conv2)] + ([("conv3", block.conv3)] if hasattr(block, "conv3") else [])
            for (a, prev), (_, nxt) in zip(convs, convs[1:]):
                groups.append(EqualizationGroup(f"{name}.{a}", [prev], [nxt], [(nxt, "input")]))
    return [g for g in groups if all(isinstance(c, QuantConv2d) for c in g.producers + g.consumers)]


@torch.no_grad()
def equalize_channels(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      alpha: float = EQUALIZE_ALPHA) -> dict[str, list[float]]:
    """Even out the channels of activations before calibration (cross-layer equalization, with
    SmoothQuant's migration strength ``alpha``); the float network is unchanged.

    A per-tensor int8 scale must cover the widest channel, so narrow channels get few levels.  ReLU(x / s)
    = ReLU(x) / s and (a + b) / s = a / s + b / s for s > 0, so dividing a channel out of the convolutions
    that produce it (weights and bias) and multiplying it into the ones that read it computes the same
    function (:func:`equalization_groups`).  s_c = amax_c^alpha / max|w_:,c|^(1 - alpha), with amax_c the
    channel's largest |activation| on ``batches`` and w the reading convolutions' weights, moves most of
    the spread into those weights, which are quantized per output channel.  Measured on the demo's
    ResNet-50 (README, "Quantization-aware fine-tuning"), 64 calibration images: the INT8 cosine error
    after calibration was 0.0055 with the in-block activations equalized and 0.0043 with the streams too.  Returns the factors per group, in order (the checkpoint keeps them;
    :func:`apply_channel_equalization` replays them)."""
    groups = equalization_groups(model)
    amax: dict[str, torch.Tensor] = {}

    def record(name, side):
        def update(tensor):
            channel_max = tensor.detach().abs().amax(dim=(0, 2, 3)).float().cpu()
            amax[name] = channel_max if name not in amax else torch.maximum(amax[name], channel_max)
        if side == "input":
            return lambda _module, inputs: update(inputs[0])
        return lambda _module, _inputs, output: update(output)

    was_training = model.training
    model.eval()
    set_mode(model, _Mode.FLOAT)
    handles = [module.register_forward_pre_hook(record(g.name, side)) if side == "input"
               else module.register_forward_hook(record(g.name, side))
               for g in groups for module, side in g.observed]
    try:
        for images, modality in batches:       # one pass: rescaling one group leaves the others' tensors as they are
            split_embed(model, images, modality)
    finally:
        for handle in handles:
            handle.remove()
    factors = {}
    for group in groups:
        if group.name not in amax:
            continue
        reach = amax[group.name]
        live = reach > 1e-6 * float(reach.max().clamp_min(1e-12))     # dead channels keep factor 1
        if not bool(live.any()):
            continue
        weight = torch.stack([c.conv.weight.detach().abs().amax(dim=(0, 2, 3)).float().cpu()
                              for c in group.consumers]).amax(0).clamp_min(1e-12)
        s = reach.clamp_min(1e-12) ** alpha / weight ** (1.0 - alpha)
        s = s / s[live].median()                                      # keep the tensor's overall magnitude
        factors[group.name] = torch.where(live, s, torch.ones_like(s)).clamp(1e-3, 1e3).tolist()
    apply_channel_equalization(model, factors)
    model.train(was_training)
    return factors


@torch.no_grad()
def apply_channel_equalization(model: nn.Module, factors: dict[str, list[float]]) -> None:
    """Rescale the groups of :func:`equalization_groups` by ``factors`` (what :func:`equalize_channels` chose)."""
    groups = {g.name: g for g in equalization_groups(model)}
    for name, values in factors.items():
        if name not in groups:
            raise ValueError(f"no equalization group {name!r} in this model")
        ref = groups[name].producers[0].conv.weight
        s = torch.tensor(values, dtype=ref.dtype, device=ref.device)
        for conv in groups[name].producers:
            conv.conv.weight.div_(s.view(-1, 1, 1, 1))
            if conv.conv.bias is not None:
                conv.conv.bias.div_(s)
        for conv in groups[name].consumers:
            conv.conv.weight.mul_(s.view(1, -1, 1, 1))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              percentile: float = CALIB_PERCENTILE) -> tuple[int, torch.Tensor]:
    """Set every activation scale from the |x| ``percentile`` on ``(normalised images, modality)`` batches.

    Returns (images seen, their FP32 embeddings): calibration runs the float network, so its outputs
    are the distillation targets at no extra cost."""
    was_training = model.training
    model.eval()
    set_mode(model, _Mode.CALIBRATE)
    for q in quantizers(model):
        q.percentile = percentile if percentile == "mse" else float(percentile)
    seen, outputs = 0, []
    for images, modality in batches:
        outputs.append(split_embed(model, images, modality))
        seen += len(images)
    for q in quantizers(model):
        q.finish_calibration()
    set_mode(model, _Mode.QUANTIZE)
    model.train(was_training)
    return seen, torch.cat(outputs) if outputs else torch.empty(0)


def build_qat_model(ckpt: dict, *, mode: str = _Mode.QUANTIZE, device: str | torch.device = "cpu") -> nn.Module:
    """The network of a QAT checkpoint (eval mode) with fake quantization ``mode`` (``float``: its FP32 twin)."""
    from .checkpoint import CheckpointError
    from .model import build_model

    if not is_qat_checkpoint(ckpt):
        raise CheckpointError("not a QAT checkpoint (no 'qat' entry): train one with admpff-train --qat-from")
    model = prepare_qat_model(build_model(dict(ckpt["config"]["model"], pretrained=None)))
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"QAT checkpoint weights do not fit its model configuration: {first}") from None
    set_mode(model, mode)
    return model.to(device).eval()


def is_qat_checkpoint(ckpt: dict) -> bool:
    return isinstance(ckpt, dict) and isinstance(ckpt.get("qat"), dict)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# -- training ----------------------------------------------------------------------------------------
class DistillingModel(nn.Module):
    """The training forward of the quantized model, with the frozen FP32 teacher's embedding beside it."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, visible: torch.Tensor, infrared: torch.Tensor):
        output = self.student(visible, infrared)
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(visible, infrared)
            output["teacher"] = {k: v for k, v in teacher["features"].items() if not k.endswith(".all")}
        return output


class DistilledMGJLoss(nn.Module):
    """``mgj_weight`` x MGJ loss + ``weight`` x (1 - cosine) between the student's and the teacher's test
    embeddings.  The MGJ terms are always computed and logged."""

    def __init__(self, mgj: nn.Module, weight: float, mgj_weight: float = 1.0):
        super().__init__()
        self.mgj, self.weight, self.mgj_weight = mgj, float(weight), float(mgj_weight)

    def forward(self, output: dict, labels: torch.Tensor, modality: torch.Tensor):
        teacher = output.get("teacher")
        loss, terms = self.mgj({k: v for k, v in output.items() if k != "teacher"}, labels, modality)
        if teacher is None or self.weight <= 0:
            return loss, terms
        names = list(teacher)
        student = torch.cat([output["features"][n] for n in names], 1)
        target = torch.cat([teacher[n] for n in names], 1)
        distill = (1.0 - F.cosine_similarity(student, target, dim=1)).mean()
        terms = dict(terms, **{"qat/distill": distill.detach()})
        return self.mgj_weight * loss + self.weight * distill, terms


def _distillation_images(trainer, samples: int):
    """-> (uint8 images [N, 3, H, W], modality [N], real paths): ``samples`` unaugmented training-split images,
    half of each modality, evenly spread over the split (as evaluation reads the cache)."""
    import numpy as np

    from admpff.runtime.contract import INFRARED, VISIBLE

    from .transforms import to_chw_tensor

    images, modality, paths = [], [], []
    for cached, code in ((trainer.data.visible, VISIBLE), (trainer.data.infrared, INFRARED)):
        array = np.load(cached.cache_path, mmap_mode="r")
        n = min(len(array), max(1, samples // 2))
        for i in np.linspace(0, len(array) - 1, n).round().astype(int):
            images.append(to_chw_tensor(array[i]))
            modality.append(code)
            paths.append(os.path.realpath(str(cached.paths[i])))
    return torch.stack(images), torch.tensor(modality, dtype=torch.long), paths


def _batches(trainer, images: torch.Tensor, modality: torch.Tensor, batch: int):
    for start in range(0, len(images), batch):
        yield (trainer.normalize(images[start:start + batch].to(trainer.device)),
               modality[start:start + batch].to(trainer.device))


#: Learning rates of the distillation (Adam), measured on the demo's ResNet-50 and the test ResNet-18
#: (README, "Quantization-aware fine-tuning"): the activation scales and the folded-BN biases move
#: orders of magnitude faster than the conv weights may.
DEFAULT_SCALE_LR = 1e-3
DEFAULT_BIAS_LR = 1e-3


class QATTrainer(Trainer):
    """``Trainer`` whose model is the fake-quantized source model.

    ``QATTrainer(config, source=ckpt, source_path=..., calib_samples=..., distill=...)`` starts a QAT run
    (folds, inserts quantizers, calibrates on the training split); ``QATTrainer(config, resume=ckpt)``
    continues one exactly.

    With the default objective (distillation only, ``mgj_weight`` 0) the run trains on a fixed set of
    ``calib_samples`` unaugmented training images, the same ones that calibrated it: their FP32 embeddings
    come out of the calibration pass (fake quantization off) and are the targets, so no teacher network
    runs during training.  Each step embeds a batch of ``2 x batch_p x batch_k`` of them with fake
    quantization and lowers 1 - cosine to the target with Adam (weights at ``lr x backbone_lr_mult``,
    folded-BN biases at ``bias_lr``, activation scales at ``scale_lr``; a rate of 0 freezes the group).
    The paths of every training image the run used are kept in the checkpoint (``qat.seen_images``),
    so that the export verifies on crops the fine-tuning never saw.  With ``mgj_weight`` > 0 the ordinary
    augmented identity batches and the MGJ loss are used instead, a frozen FP32 teacher beside them.
    """

    def __init__(self, config, *, source: dict | None = None, source_path: str | None = None,
                 resume: dict | None = None, calib_samples: int = 256, distill: float = 1.0,
                 train_head: bool = False, mgj_weight: float = 0.0, scale_lr: float = DEFAULT_SCALE_LR,
                 bias_lr: float = DEFAULT_BIAS_LR, percentile: float = CALIB_PERCENTILE,
                 equalize: float = EQUALIZE_ALPHA, progress: bool | None = None):
        from .checkpoint import build_model_from_checkpoint
        from .model import build_model

        if (source is None) == (resume is None):
            raise TrainingError("a QAT run starts from --qat-from CHECKPOINT or resumes from a QAT last.pt")
        origin = source if source is not None else resume
        if source is not None and is_qat_checkpoint(source):
            raise TrainingError("--qat-from needs an FP32 training checkpoint; this one is already a QAT "
                                "checkpoint (continue it with --resume)")
        # The ordinary trainer builds data, sampler, loader and logger; its fresh model is replaced below.
        super().__init__(config, resume=None, progress=progress)
        stored = int(origin["config"]["model"]["num_classes"])
        if stored != self.data.num_classes:
            raise TrainingError(f"the checkpoint was trained on {stored} identities but the data now give "
                                f"{self.data.num_classes}: QAT must use the source model's training split")
        if percentile != "mse" and not 0 < float(percentile) <= 100:
            raise TrainingError(f"--qat-calib must be 'mse' or a percentile in (0, 100], not {percentile}")
        if min(scale_lr, bias_lr) < 0:
            raise TrainingError("--qat-scale-lr and --qat-bias-lr must be >= 0")
        if not 0 <= equalize <= 1:
            raise TrainingError(f"--qat-equalize must be in [0, 1] (0: off), not {equalize}")
        settings = dict(resume["qat"]) if resume is not None else {
            "format_version": QAT_FORMAT_VERSION, "scheme": dict(SCHEME),
            "source": os.path.abspath(source_path) if source_path else None,
            "source_sha256": file_sha256(source_path) if source_path else None,
            "calibration": {"split": "train", "requested": int(calib_samples), "samples": int(calib_samples),
                            "percentile": percentile if percentile == "mse" else float(percentile)},
            "equalization": {"alpha": float(equalize), "factors": {}},
            "distill": float(distill), "train_head": bool(train_head), "mgj_weight": float(mgj_weight),
            "optimizer": {"kind": "adam", "weight_lr": config.lr * config.backbone_lr_mult,
                          "bias_lr": float(bias_lr), "scale_lr": float(scale_lr)},
            "batch": 2 * config.batch_p * config.batch_k}
        if settings.get("format_version") != QAT_FORMAT_VERSION:
            raise TrainingError(f"this QAT checkpoint has format {settings.get('format_version')}, this admpff "
                                f"resumes format {QAT_FORMAT_VERSION}: start a new run with --qat-from")
        self.qat = settings
        self.distill_only = self.qat["distill"] > 0 and not self.qat.get("mgj_weight")
        if self.distill_only and self.dist.enabled:
            raise TrainingError("QAT distillation runs in one process: start it without torchrun")
        self.model_config = self.model_config.__class__.from_dict(dict(origin["config"]["model"], pretrained=None))
        source_model = build_model_from_checkpoint(source) if resume is None else build_model(self.model_config)
        self.model = prepare_qat_model(source_model).to(self.device)
        self.contract = self.model.contract()
        if not self.qat.setdefault("train_head", False):
            # The embedding head is float and not quantized: it stays as trained.
            for head in self.model.heads.values():
                head.reducers.requires_grad_(False)
        requested = int(self.qat["calibration"].get("requested", self.qat["calibration"]["samples"]))
        images, modality, paths = _distillation_images(self, requested)
        batch = int(self.qat["batch"])
        self._distill = None
        teacher = None
        if resume is None:
            if equalize > 0:   # before calibration: the scales are set for the equalized tensors
                self.qat["equalization"]["factors"] = equalize_channels(
                    self.model, _batches(self, images, modality, batch), equalize)
            seen, targets = calibrate(self.model, _batches(self, images, modality, batch), percentile)
            self.qat["calibration"]["samples"] = seen
            self.qat["calibrated_scales"] = {n: float(p.detach()) for n, p in _named_scales(self.model)}
            self.qat["seen_images"] = sorted(set(paths) | (set() if self.distill_only else set(self._split_paths())))
            log.info("QAT: %d convolutions and %d residual inputs fake-quantized, scales calibrated on %d "
                     "training images", len(quantized_convs(self.model)),
                     len(quantizers(self.model)) - len(quantized_convs(self.model)), seen)
            if not self.distill_only:
                teacher = build_model_from_checkpoint(source, self.device)
        else:
            set_mode(self.model, _Mode.QUANTIZE)
            if not set(paths) <= set(self.qat.get("seen_images", [])):
                raise TrainingError("the training split is not the one this QAT run started on (its distillation "
                                    "images differ): resume with the same --data")
            # The teacher is the FP32 model the QAT run started from: the float twin of the resumed
            # weights would drift with them, so rebuild it from the recorded source when it is there.
            teacher = self._resume_teacher(settings)
            targets = None
            if self.distill_only:
                if teacher is None:
                    raise TrainingError(f"resuming QAT distillation needs its source checkpoint "
                                        f"{settings.get('source')} unchanged (its FP32 embeddings are the targets)")
                with torch.no_grad():
                    teacher.eval()
                    targets = torch.cat([split_embed(teacher, x, m) for x, m in _batches(self, images, modality, batch)])
                teacher = None
        if self.distill_only:
            self._distill = (images, modality, targets.detach().cpu())
            self.train_model = self.model
        elif self.qat["distill"] > 0 and teacher is not None:
            self.train_model = DistillingModel(self.model, teacher.to(self.device))
            self.criterion = DistilledMGJLoss(self.criterion, self.qat["distill"], self.qat.get("mgj_weight", 1.0))
        else:
            self.train_model = self.model
        if self.dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.cuda else None)
        self.optimizer = _build_qat_optimizer(self.model, config, self.qat["optimizer"])
        self.scheduler = build_scheduler(self.optimizer, config)
        if resume is not None:
            self.load_state_dict(resume)

    def _split_paths(self):
        return [os.path.realpath(str(p)) for cached in (self.data.visible, self.data.infrared) for p in cached.paths]

    def _resume_teacher(self, settings: dict):
        from .checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint

        path = settings.get("source")
        if not settings.get("distill") or not path or not os.path.isfile(path):
            if settings.get("distill"):
                log.warning("QAT resume: the source checkpoint %s is gone; continuing without distillation", path)
            return None
        if settings.get("source_sha256") and file_sha256(path) != settings["source_sha256"]:
            log.warning("QAT resume: %s changed since the run started; continuing without distillation", path)
            return None
        try:
            return build_model_from_checkpoint(load_checkpoint(path), self.device)
        except CheckpointError as exc:
            log.warning("QAT resume: cannot use the source checkpoint (%s); continuing without distillation", exc)
            return None

    def train_epoch(self, epoch: int) -> dict:
        """The distillation epoch (see the class doc); the ordinary epoch when the MGJ loss is on."""
        if self._distill is None:
            return super().train_epoch(epoch)
        from tqdm import tqdm

        images, modality, targets = self._distill
        batch, weight = int(self.qat["batch"]), float(self.qat["distill"])
        steps = self.config.max_steps_per_epoch or math.ceil(len(images) / batch)
        # a fresh permutation of the distillation images per epoch, seeded by the epoch: resume is exact
        gen = torch.Generator().manual_seed(int(self.config.seed) * 100003 + epoch)
        order = torch.cat([torch.randperm(len(images), generator=gen)
                           for _ in range(math.ceil(steps * batch / len(images)))])
        self.model.train()
        lrs = self.current_lrs()
        total, t0 = 0.0, time.perf_counter()
        bar = tqdm(total=steps, desc=f"QAT epoch {epoch + 1}/{self.config.epochs}", unit="step",
                   disable=not (self.progress and self.is_main), dynamic_ncols=True, leave=False)
        for step in range(steps):
            idx = order[step * batch:(step + 1) * batch]
            x = self.normalize(images[idx].to(self.device))
            emb = split_embed(self.model, x, modality[idx].to(self.device))
            distance = (1.0 - (emb * targets[idx].to(self.device)).sum(1)).mean()
            loss = weight * distance
            if not torch.isfinite(loss):
                raise TrainingError(f"the QAT loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                    "lower --lr / --qat-scale-lr / --qat-bias-lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(distance.detach())
            self.global_step += 1
            if self.is_main:
                bar.set_postfix(distance=f"{float(distance.detach()):.2e}")
                self.logger.scalars("train_step", {"loss": float(loss.detach())}, self.global_step)
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - t0
        return {"loss": weight * total / steps, "terms": {"qat/distill": total / steps}, "lr": lrs, "steps": steps,
                "images_per_s": steps * batch / max(elapsed, 1e-9), "seconds": elapsed}

    def state_dict(self, epoch: int) -> dict:
        state = super().state_dict(epoch)
        state["qat"] = dict(self.qat, scales={n: float(p.detach()) for n, p in _named_scales(self.model)})
        return state


def _named_scales(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, ActivationQuantizer):
            yield name, module.scale


def _build_qat_optimizer(model: nn.Module, config, rates: dict) -> torch.optim.Optimizer:
    """Adam over the groups whose rate is not 0 (the others are frozen): conv weights, folded-BN biases,
    activation scales, and the head only with ``train_head``.  No weight decay: it would pull the model
    away from the FP32 one it is distilled to, and every scale towards zero."""
    scales = {id(p) for p in scale_parameters(model)}
    backbone = [p for p in model.backbone_parameters() if id(p) not in scales]
    groups = [("weights", [p for p in backbone if p.dim() > 1], rates["weight_lr"]),
              ("biases", [p for p in backbone if p.dim() <= 1], rates["bias_lr"]),
              ("head", [p for p in model.head_parameters() if p.requires_grad], config.lr)]
    param_groups = []
    for name, params, lr in groups:
        if lr > 0 and params:
            for p in params:  # fuse_conv_bn_eval gives a bias-less conv's folded bias requires_grad=False
                p.requires_grad_(True)
            param_groups.append({"params": params, "lr": float(lr), "name": name})
        else:
            for p in params:
                p.requires_grad_(False)
    # The scale rate is relative: Adam moves a parameter by about lr per step whatever its gradient, and
    # the calibrated scales span two orders of magnitude, so each scale gets lr x its calibrated value.
    for p in scale_parameters(model):
        if rates["scale_lr"] > 0:
            param_groups.append({"params": [p], "lr": float(rates["scale_lr"]) * float(p.detach().abs()),
                                 "name": "qat-scales"})
        else:
            p.requires_grad_(False)
    if not param_groups:
        raise TrainingError("every QAT learning rate is 0: nothing would be trained")
    return torch.optim.Adam(param_groups, lr=config.lr, weight_decay=0.0)
