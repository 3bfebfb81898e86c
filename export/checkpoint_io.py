"""Read a training checkpoint and rebuild its model from the configuration saved inside it.

Export depends only on the checkpoint artifact: ``config.model`` (a ``ModelConfig`` dict) and the
``model`` state dict.  Every failure is an ``ExportError`` with a one-line message.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path


class ExportError(RuntimeError):
    """Export cannot go on; the message is meant to be shown to the user as is."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _torch_load(torch, path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint(path: str | Path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path}")
    # torch's own pickle warnings would bury the one-line error; checkpoints hold plain containers,
    # tensors and numpy RNG state, so try the safe loader first.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ckpt = _torch_load(torch, path)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"checkpoint {path} is corrupt or not a PyTorch file ({msg})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ExportError(f"{path} is not an admpff checkpoint (needs 'model' and 'config'; "
                          "train with admpff-train or save {'model': state_dict, 'config': {'model': ...}})")
    if "model" not in ckpt["config"]:
        raise ExportError(f"{path} has no model configuration under config['model']")
    return ckpt


def model_from_checkpoint(path: str | Path):
    """-> (model in eval mode, ModelConfig, checkpoint sha256)."""
    from admpff.training.model import ModelConfig, ModelConfigError, build_model

    ckpt = load_checkpoint(path)
    try:
        config = ModelConfig.from_dict(dict(ckpt["config"]["model"], pretrained=None))
        model = build_model(config)
    except (ModelConfigError, TypeError, ValueError) as exc:
        raise ExportError(f"checkpoint {path} has an unusable model configuration: {exc}") from None
    state = ckpt["model"]
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ExportError(f"checkpoint {path} does not match its own model configuration: {first}") from None
    model.eval()
    return model, config, file_sha256(path)
