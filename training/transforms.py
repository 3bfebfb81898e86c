"""Training augmentation on uint8 images, and the ImageNet normalisation of the input contract.

HcTri's train transform is ``Pad(10) -> RandomCrop(H, W) -> RandomHorizontalFlip -> ToTensor ->
Normalize`` on PIL images.  Here the same steps run on the ``H x W x 3`` uint8 rows of the image cache
(already resized to the contract's size by ``admpff.runtime.preprocess.resize_crop``), with numpy
slicing only: the padded image is never materialised, the crop window is copied straight into a
zero canvas.  Images stay uint8 (CHW) until they reach the device, where :class:`Normalizer` turns
a whole batch into float and normalises it (4x less host-to-device traffic than float32).

Every random draw comes from an explicit ``numpy.random.Generator``: the data set seeds one per
sample from the identity sampler, so augmentation is a pure function of (seed, epoch, batch, slot)
and a resumed run, or a run with any number of loader workers, sees exactly the same pixels.

``channel_adaptive_gray`` is CAJ's ``ChannelAdapGray`` (Ye et al., ICCV 2021): with probability 1/4
each, copy R, G or B into all three channels; otherwise, with probability ``p`` (0.5), convert to
grayscale (0.2989 R + 0.5870 G + 0.1140 B).  CAJ applies it to the normalised tensor; here it is
applied to the uint8 RGB pixels before normalisation, which is what a replicated-channel infrared
frame looks like at test time (decision recorded in the module rather than hidden in a flag).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from admpff.runtime.contract import DEFAULT_CONTRACT, InputContract

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # CAJ's (and PIL's) luma weights


def pad_random_crop(image: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
    """``Pad(pad)`` (zeros) then ``RandomCrop`` back to the input size, without building the pad.

    The crop offset is uniform in ``[0, 2*pad]`` on each axis, as torchvision's RandomCrop draws it.
    """
    if pad <= 0:
        return image
    h, w = image.shape[:2]
    top = int(rng.integers(0, 2 * pad + 1))
    left = int(rng.integers(0, 2 * pad + 1))
    dy, dx = top - pad, left - pad  # source offset of the crop window
    if dy == 0 and dx == 0:
        return image
    out = np.zeros_like(image)
    src_y0, src_y1 = max(0, dy), min(h, h + dy)
    src_x0, src_x1 = max(0, dx), min(w, w + dx)
    out[src_y0 - dy:src_y1 - dy, src_x0 - dx:src_x1 - dx] = image[src_y0:src_y1, src_x0:src_x1]
    return out


def channel_adaptive_gray(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """CAJ ChannelAdapGray on an ``H x W x 3`` uint8 RGB image (returns a new array or ``image``)."""
    choice = int(rng.integers(0, 4))
    if choice < 3:  # replicate one channel
        return np.repeat(image[:, :, choice:choice + 1], 3, axis=2)
    if rng.random() >= p:
        return image
    gray = image.astype(np.float32) @ np.asarray(GRAY_WEIGHTS, np.float32)
    gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


@dataclass
class TrainAugment:
    """Pad + random crop, horizontal flip, optional channel augmentation; uint8 HWC -> uint8 CHW tensor."""

    pad: int = 10
    flip: bool = True
    channel_aug: bool = False
    gray_p: float = 0.5

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
        image = pad_random_crop(image, rng, self.pad)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        if self.channel_aug:
            image = channel_adaptive_gray(image, rng, self.gray_p)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """Test-time: the cached (already resized) image as a uint8 CHW tensor, nothing else."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))


class Normalizer(torch.nn.Module):
    """uint8 (or 0..255 float) NCHW batch -> float32 ImageNet-normalised, with the contract's statistics."""

    def __init__(self, contract: InputContract = DEFAULT_CONTRACT):
        super().__init__()
        self.register_buffer("mean", torch.tensor(contract.mean_255, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(contract.std_255, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(batch.device), self.std.to(batch.device)
        return (batch.float() - mean) / std
