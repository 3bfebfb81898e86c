"""One real ``admpff-export`` run with the serving outputs, shared by the single-modality, Triton-repository
and DeepStream tests (run once per session): a tiny ADMPFF-Net checkpoint, FP32 + INT8 Q/DQ + CPU-INT8,
``--modality visible --modality infrared --triton REPO --deepstream DIR``."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from admpff.runtime.triton_bench import sample_crops
from admpff.training.model import ADMPFFNet, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
VTEST = next((p for p in (ROOT.parent / "shared" / "data" / "vtest.avi", Path("/work/shared/data/vtest.avi"))
              if p.is_file()), None)
NAME = "m"
H, W = 96, 48


@dataclass
class ServingExport:
    out: Path
    repo: Path
    deepstream: Path
    stdout: str

    def file(self, suffix: str) -> Path:
        return self.out / f"{NAME}{suffix}"


def tiny_model(seed: int = 0) -> ADMPFFNet:
    torch.manual_seed(seed)
    model = ADMPFFNet(ModelConfig(num_classes=4, backbone="resnet18", height=H, width=W, dim=16, en_rows=1)).eval()
    with torch.no_grad():  # distinct stems, as after training, so fixing the modality matters
        for p in model.infrared_stem.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def real_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """Person-sized windows from the real clip when it is here, else textured synthetic crops."""
    return sample_crops(n, str(VTEST) if VTEST is not None else None, seed=seed)


_CACHE: dict[str, ServingExport] = {}


def serving_export(tmp_root: Path) -> ServingExport:
    if "run" in _CACHE:
        return _CACHE["run"]
    tmp_root.mkdir(parents=True, exist_ok=True)
    ckpt = tmp_root / "tiny.pt"
    model = tiny_model()
    torch.save({"model": model.state_dict(), "config": {"model": model.config.to_dict()}}, ckpt)
    crops_dir = tmp_root / "crops"
    crops_dir.mkdir(exist_ok=True)
    for i, crop in enumerate(real_crops(24)):
        cv2.imwrite(str(crops_dir / f"c{i:02d}.png"), crop)
    out, repo, ds = tmp_root / "out", tmp_root / "repo", tmp_root / "ds"
    cmd = [sys.executable, "-m", "admpff.export.cli", str(ckpt), "--out", str(out), "--name", NAME,
           "--int8", "--cpu-int8", "--calib-data", str(crops_dir), "--calib-samples", "16", "--no-verify",
           "--auto-float", "0", "--modality", "visible", "--modality", "infrared",
           "--triton", str(repo), "--deepstream", str(ds), "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"admpff-export failed ({p.returncode}): {p.stderr[-2000:]}")
    _CACHE["run"] = ServingExport(out, repo, ds, p.stdout)
    return _CACHE["run"]
