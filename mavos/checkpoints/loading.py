"""Loading network weights from our Lightning checkpoints (or converted official ones) with clear errors."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model; names the file."""


def read_network_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The network's state dict from a Lightning checkpoint (``net.`` keys) or a plain state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state_dict found in checkpoint")
    if any(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    return state


def load_network_weights(net: nn.Module, path: str | Path) -> None:
    """Load weights strictly; a mismatch lists missing / unexpected / wrong-shape keys and the file."""
    state = read_network_state(path)
    own = net.state_dict()
    # BatchNorm's step counter is the one difference between a trainable-BN and a frozen-BN encoder; it
    # plays no part in the forward pass, so checkpoints move freely between the two.
    counter = "num_batches_tracked"
    state = {k: v for k, v in state.items() if not k.endswith(counter) or k in own}
    for k in own:
        if k.endswith(counter) and k not in state:
            state[k] = own[k]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        def head(items):
            return ", ".join(items[:5]) + (f" ... (+{len(items) - 5})" if len(items) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys [{head(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{head(unexpected)}]")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches [{head(wrong)}]")
        raise CheckpointError(f"{path}: checkpoint does not fit the model ({type(net.memory).__name__} memory, "
                              f"{sum(p.numel() for p in net.parameters()):,} parameters): " + "; ".join(parts) +
                              ". Pick the model config the checkpoint was trained with (model=..., memory=...).")
    net.load_state_dict(state, strict=True)
