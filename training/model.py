"""ADMPFF-Net (Shi et al., CMC 77(3), 2023, section 3), with the open choices taken from HcTri's code.

Layout of the default model (scheme 3, the paper's best in Table 4)::

    visible  -> stage0_v --\\                               /-> stages 3-4 (copy P3) -> 3 pose stripes (1:2:3)
                            >-- x_v | x_ir -> stages 1-2 --+--> stages 3-4 (copy P6) -> 6 equal stripes
    infrared -> stage0_ir -/        (shared)                \\-> stages 3-4 (copy EN) -> leg stripe (LIE)

Every stripe: max pool (GeM optional) -> 1x1 conv to ``dim`` -> BN -> ReLU -> its own classifier.  The
concatenated P3 and P6 stripes are the branches' "global" features with their own classifiers
(eq. 8-9).  The test embedding is eq. (3): [P3 stripes | P6 stripes | EN], L2-normalised (5120-d).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from admpff.runtime.contract import INFRARED, InputContract, Stripe

log = logging.getLogger(__name__)

# Table 1 of the paper: which ResNet stages are modality-specific, shared, and copied per branch.
SCHEMES: dict[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    1: ((0,), (1, 2, 3), (4,)),
    2: ((0, 1), (2, 3), (4,)),
    3: ((0,), (1, 2), (3, 4)),
    4: ((0,), (1,), (2, 3, 4)),
}
BRANCHES = ("p3", "p6", "en")
BACKBONE_CHANNELS = {"resnet50": 2048, "resnet34": 512, "resnet18": 512}
FEATURE_STRIDE = 16  # conv1 /2, maxpool /2, layer2 /2, layer3 /2, layer4 stride 1 (last stride 1)
# torchvision's ImageNet V1 weight files (HcTri used the V1 weights); looked up in the torch hub cache.
IMAGENET_WEIGHT_FILES = {
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    "resnet34": ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    "resnet18": ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
}


class ModelConfigError(ValueError):
    """A model configuration (input size, scheme, slicing) that cannot be built."""


class PretrainedWeightsError(FileNotFoundError):
    """ImageNet weights were asked for but are not available locally."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; saved inside every checkpoint."""

    num_classes: int
    scheme: int = 3
    slicing: str = "pose"          # P3 branch: "pose" (1:2:3, pIS) or "equal" (ablation)
    pool: str = "max"              # stripe pooling: "max" (paper) or "gem" (HcTri)
    gem_p: float = 3.0
    dim: int = 512                 # per-stripe embedding size (Table 3)
    en_rows: int = 3               # LIE branch: bottom rows of the feature map (3x9 legs)
    height: int = 288
    width: int = 144
    backbone: str = "resnet50"     # the paper's; resnet18/34 only for fast experiments and CI
    pretrained: str | None = None  # None, "imagenet" (local torch cache) or a path to a .pth file

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def valid_input_sizes_message(en_rows: int = 3) -> str:
    return ("valid input sizes have a height that is a multiple of 96 (the 18-row map must split 1:2:3 "
            "and into 6 stripes: e.g. 192, 288, 384) and a width that is a multiple of 16 (e.g. 96, 128, 144)"
            f", with at least {en_rows} feature rows for the LIE stripe")


def stripe_rows(map_height: int, branch: str, slicing: str = "pose", en_rows: int = 3) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of each stripe of a branch on a feature map ``map_height`` rows tall."""
    if map_height % 6:
        raise ModelConfigError(f"feature map height {map_height} cannot be cut into 6 stripes or 1:2:3; "
                               + valid_input_sizes_message(en_rows))
    unit = map_height // 6
    if branch == "p3":
        if slicing == "pose":        # head : torso : legs = 1 : 2 : 3  (3, 6, 9 rows of 18)
            return [(0, unit), (unit, 3 * unit), (3 * unit, 6 * unit)]
        if slicing == "equal":
            return [(0, 2 * unit), (2 * unit, 4 * unit), (4 * unit, 6 * unit)]
        raise ModelConfigError(f"--slicing must be 'pose' or 'equal', not {slicing!r}")
    if branch == "p6":
        return [(i * unit, (i + 1) * unit) for i in range(6)]
    if branch == "en":
        if not 0 < en_rows <= map_height:
            raise ModelConfigError(f"--en-rows {en_rows} does not fit a {map_height}-row feature map")
        return [(map_height - en_rows, map_height)]
    raise ModelConfigError(f"unknown branch {branch!r}")


def check_input_size(height: int, width: int, en_rows: int = 3) -> tuple[int, int]:
    """Return the feature-map size for an input size, or raise naming the valid sizes."""
    if height <= 0 or width <= 0 or height % (FEATURE_STRIDE * 6) or width % FEATURE_STRIDE:
        raise ModelConfigError(f"input size {height}x{width} cannot be cut as ADMPFF-Net needs: "
                               + valid_input_sizes_message(en_rows))
    map_h, map_w = height // FEATURE_STRIDE, width // FEATURE_STRIDE
    if en_rows > map_h:
        raise ModelConfigError(f"--en-rows {en_rows} exceeds the {map_h}-row feature map of a {height}x{width} input")
    return map_h, map_w


def gem_pool(x: torch.Tensor, p: float) -> torch.Tensor:
    """Generalised-mean pooling as HcTri: (mean(x^p) + 1e-12)^(1/p)."""
    return (x.clamp(min=0).pow(p).mean(dim=(2, 3), keepdim=True) + 1e-12).pow(1.0 / p)


def load_imagenet_state_dict(backbone: str, source: str) -> dict:
    """ImageNet weights from a file path, or from the local torch hub cache for ``source="imagenet"``."""
    if source != "imagenet":
        path = Path(source).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {exc}") from None
        return state.get("state_dict", state) if isinstance(state, dict) else state
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in IMAGENET_WEIGHT_FILES[backbone]:
        if (cache / name).is_file():
            return load_imagenet_state_dict(backbone, str(cache / name))
    raise PretrainedWeightsError(
        f"ImageNet weights for {backbone} are not in {cache} and no model hub is reachable from here: copy "
        f"torchvision's {IMAGENET_WEIGHT_FILES[backbone][0]} there, or pass --pretrained PATH (Python: pretrained=PATH)")


def _resnet_stages(backbone: str, pretrained: str | None) -> list[nn.Module]:
    """torchvision ResNet split into stage0 (conv1, bn1, relu, maxpool) and stages 1-4, last stride 1."""
    if backbone not in BACKBONE_CHANNELS:
        raise ModelConfigError(f"--backbone must be one of {sorted(BACKBONE_CHANNELS)}, not {backbone!r}")
    net = getattr(torchvision.models, backbone)(weights=None)
    if pretrained:
        state = load_imagenet_state_dict(backbone, pretrained)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise PretrainedWeightsError(f"pretrained weights do not fit {backbone}: missing {missing[:3]}, "
                                         f"unexpected {unexpected[:3]}")
    # Last stride 1 (HcTri, MGN): a 288x144 input then gives an 18x9 map instead of 9x5.
    first = net.layer4[0]
    if hasattr(first, "conv3"):       # Bottleneck (torchvision puts the stride on conv2)
        first.conv2.stride = (1, 1)
    else:                             # BasicBlock
        first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    stage0 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return [stage0, net.layer1, net.layer2, net.layer3, net.layer4]


class StripeHead(nn.Module):
    """Pool each stripe of a branch's map, reduce it with 1x1 conv + BN + ReLU, classify it."""

    def __init__(self, rows: list[tuple[int, int]], in_channels: int, dim: int, num_classes: int,
                 pool: str = "max", gem_p: float = 3.0, global_classifier: bool = True):
        super().__init__()
        if pool not in ("max", "gem"):
            raise ModelConfigError(f"--pool must be 'max' or 'gem', not {pool!r}")
        self.rows = [tuple(r) for r in rows]
        self.pool, self.gem_p = pool, gem_p
        self.reducers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=True), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
            for _ in self.rows)
        self.classifiers = nn.ModuleList(nn.Linear(dim, num_classes) for _ in self.rows)
        self.global_classifier = nn.Linear(dim * len(self.rows), num_classes) if global_classifier else None
        for reducer in self.reducers:  # HcTri: Kaiming-normal fan_in convs, N(0, 0.001) classifiers
            nn.init.kaiming_normal_(reducer[0].weight, a=0, mode="fan_in")
            nn.init.zeros_(reducer[0].bias)
        for linear in [*self.classifiers] + ([self.global_classifier] if self.global_classifier else []):
            nn.init.normal_(linear.weight, std=0.001)
            nn.init.zeros_(linear.bias)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "gem":
            return gem_pool(x, self.gem_p)
        return torch.amax(x, dim=(2, 3), keepdim=True)

    def stripe_features(self, fmap: torch.Tensor) -> list[torch.Tensor]:
        return [reducer(self._pool(fmap[:, :, a:b, :])).flatten(1)
                for (a, b), reducer in zip(self.rows, self.reducers)]

    def logits(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        stripe_logits = [clf(f) for clf, f in zip(self.classifiers, features)]
        global_logits = self.global_classifier(torch.cat(features, 1)) if self.global_classifier else None
        return stripe_logits, global_logits


class ADMPFFNet(nn.Module):
    """The network.

    ``model(images, modality)`` (eval): images normalised NCHW, modality int tensor per sample
    (0 visible, 1 infrared; a batch may mix them) -> [B, 5120] L2-normalised embedding.

    ``model(visible, infrared)`` (training, both 4-D image batches): a dict with ``features`` and
    ``logits`` by name (``p3.0``.., ``p3.all``, ``p6.0``.., ``p6.all``, ``en``), samples ordered
    visible first, then infrared, as HcTri concatenates them before the shared stages.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.scheme not in SCHEMES:
            raise ModelConfigError(f"--scheme must be one of {sorted(SCHEMES)}, not {config.scheme}")
        self.config = config
        map_h, _ = check_input_size(config.height, config.width, config.en_rows)
        specific, shared, branch = SCHEMES[config.scheme]
        stages = _resnet_stages(config.backbone, config.pretrained)
        stem = nn.Sequential(*(stages[i] for i in specific))
        self.visible_stem = stem
        self.infrared_stem = copy.deepcopy(stem)
        self.shared = nn.Sequential(*(stages[i] for i in shared))
        trunk = nn.Sequential(*(stages[i] for i in branch))
        # Three independent copies of the disentangled stages, all starting from the same weights.
        self.branches = nn.ModuleDict({name: copy.deepcopy(trunk) for name in BRANCHES})
        channels = BACKBONE_CHANNELS[config.backbone]
        self.heads = nn.ModuleDict({
            name: StripeHead(stripe_rows(map_h, name, config.slicing, config.en_rows), channels, config.dim,
                             config.num_classes, config.pool, config.gem_p, global_classifier=(name != "en"))
            for name in BRANCHES})
        self._map_height = map_h

    # -- contract ------------------------------------------------------------------------------
    def embedding_layout(self) -> tuple[Stripe, ...]:
        names = [f"{b}.{i}" for b in ("p3", "p6") for i in range(len(self.heads[b].rows))] + ["en"]
        return tuple(Stripe(n, i * self.config.dim, self.config.dim) for i, n in enumerate(names))

    def contract(self) -> InputContract:
        return InputContract(height=self.config.height, width=self.config.width, embedding=self.embedding_layout())

    @property
    def embedding_dim(self) -> int:
        return self.config.dim * sum(len(h.rows) for h in self.heads.values())

    def backbone_parameters(self):
        """Pretrained ResNet parameters (trained at 0.1x the head's learning rate, as HcTri)."""
        for module in (self.visible_stem, self.infrared_stem, self.shared, self.branches):
            yield from module.parameters()

    def head_parameters(self):
        return self.heads.parameters()

    # -- forward -------------------------------------------------------------------------------
    def _check_map(self, fmap: torch.Tensor) -> None:
        if fmap.shape[2] != self._map_height:
            h = fmap.shape[2] * FEATURE_STRIDE
            raise ModelConfigError(f"got a {fmap.shape[2]}-row feature map (input ~{h} px high) but the model was "
                                   f"built for {self.config.height}x{self.config.width} inputs")

    def _branch_features(self, shared: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        out = {}
        for name in BRANCHES:
            fmap = self.branches[name](shared)
            self._check_map(fmap)
            out[name] = self.heads[name].stripe_features(fmap)
        return out

    def forward(self, images: torch.Tensor, second: torch.Tensor):
        if second.dim() == 4:
            return self.forward_train(images, second)
        return self.embed(images, second)

    def embed(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Eq. (3): [P3 stripes | P6 stripes | EN], L2-normalised; per-sample modality selects the stem."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ModelConfigError(f"images must be [batch, 3, H, W], got {list(images.shape)}")
        # Both stems run on the whole batch and each sample keeps its own modality's output: this keeps
        # the graph static for ONNX/TensorRT and lets one batch mix visible and infrared crops.
        is_ir = modality.reshape(-1, 1, 1, 1) == INFRARED
        x = torch.where(is_ir, self.infrared_stem(images), self.visible_stem(images))
        feats = self._branch_features(self.shared(x))
        embedding = torch.cat(feats["p3"] + feats["p6"] + feats["en"], dim=1)
        return F.normalize(embedding, p=2, dim=1)

    def forward_train(self, visible: torch.Tensor, infrared: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        x = torch.cat([self.visible_stem(visible), self.infrared_stem(infrared)], dim=0)
        feats = self._branch_features(self.shared(x))
        features, logits = {}, {}
        for name in BRANCHES:
            stripe_logits, global_logits = self.heads[name].logits(feats[name])
            if name == "en":
                features["en"], logits["en"] = feats[name][0], stripe_logits[0]
                continue
            for i, (f, lg) in enumerate(zip(feats[name], stripe_logits)):
                features[f"{name}.{i}"], logits[f"{name}.{i}"] = f, lg
            features[f"{name}.all"], logits[f"{name}.all"] = torch.cat(feats[name], 1), global_logits
        return {"features": features, "logits": logits}


def build_model(config: ModelConfig | dict) -> ADMPFFNet:
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return ADMPFFNet(config)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
