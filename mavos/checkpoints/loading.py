"""Reading our checkpoints: the network they hold (its stored config) and its weights, with clear errors.

Every checkpoint mavos writes (training, ``python -m mavos.checkpoints convert``) stores the resolved
network config under ``NETWORK_KEY`` (``{"model": name or None, "config": {... _target_ ...}}``), so
``load_network(path)`` rebuilds the right network without being told its name. Checkpoints written before
that need ``model=``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mavos.errors import MavosError

NETWORK_KEY = "mavos_network"

# Network settings that do not change what a trained network computes at test time: training-only
# options (weights to start from, frozen BatchNorm, frozen stages, dropout / drop-path rates, the training
# memory gap) and the test gap, which is a legitimate test-time choice (applied, not compared).
TEST_TIME_KEYS = ("memory.test_gap",)
TRAINING_ONLY_KEYS = ("encoder.weights", "encoder.frozen_bn", "encoder.freeze_at", "encoder.drop_path", "droppath",
                      "lst_dropout", "id_dropout", "memory.drop_path", "memory.train_gap")


class CheckpointError(MavosError, RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model; names the file."""


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load`` a checkpoint we (or Lightning) wrote; anything else is a CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give the checkpoint file in it (e.g. {path / 'last.ckpt'})")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, expected a dict)")
    return ckpt


def network_state(ckpt: dict, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The network's state dict from a Lightning checkpoint (``net.`` keys) or a plain state dict."""
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors found in checkpoint")
    if any(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    return state


OFFICIAL_KEY_PREFIXES = ("LSTT.", "patch_wise_id_bank.", "long_term_memory_attention.", "module.")


def convert_first(path: str | Path, state: Mapping) -> str:
    """A hint for a checkpoint of the authors' code (its key names), or ""."""
    if any(isinstance(k, str) and k.startswith(OFFICIAL_KEY_PREFIXES) for k in state):
        return (f" It is a checkpoint of the authors' code (MAVOS / aot-benchmark key names): convert it first, "
                f"python -m mavos.checkpoints convert {path} weights/<name>.ckpt model=<name>.")
    return ""


def read_network_state(path: str | Path) -> dict[str, torch.Tensor]:
    return network_state(read_checkpoint(path), path)


def stored_network(ckpt: dict) -> dict[str, Any] | None:
    """``{"model": name or None, "config": network config}`` stored in a checkpoint, or None (older files)."""
    record = ckpt.get(NETWORK_KEY)
    return record if isinstance(record, dict) and isinstance(record.get("config"), dict) else None


def network_record(config: Mapping[str, Any], model: str | None = None) -> dict[str, Any]:
    """What a checkpoint stores about its network (see ``NETWORK_KEY``)."""
    return {"model": model, "config": _plain(config)}


def _plain(node):
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def architecture_differences(stored: Mapping, requested: Mapping) -> list[str]:
    """Settings that differ between two network configs and change what the network computes."""
    a, b = _flatten(stored), _flatten(requested)
    ignored = set(TEST_TIME_KEYS) | set(TRAINING_ONLY_KEYS)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ignored:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: checkpoint {a.get(key, '<absent>')!r} vs requested {b.get(key, '<absent>')!r}")
    return diffs


def resolve_network_config(path: str | Path, ckpt: dict, requested: Mapping | None = None,
                           requested_name: str | None = None) -> tuple[dict[str, Any], str | None]:
    """The network config to build for a checkpoint: its stored one, checked against an explicit request.

    ``requested`` is the network config the user asked for explicitly (``model=...``, ``memory=...`` or
    ``model.net.*`` overrides), None when they asked for nothing. A request that changes the architecture is
    refused, naming both; a different ``memory.test_gap`` is applied (a test-time choice). Checkpoints without a
    stored config (older files) use the request, which is then required.
    """
    from mavos.registry import describe

    record = stored_network(ckpt)
    if record is None:
        if requested is None:
            state = ckpt.get("state_dict", ckpt)
            official = convert_first(path, state if isinstance(state, dict) else {})
            raise CheckpointError(f"{path}: the checkpoint does not say which network it holds" + (
                f".{official}" if official else " (written before checkpoints stored their config, or not by "
                                                "mavos); pass model=<name>"))
        return dict(requested), requested_name
    config, name = dict(record["config"]), record.get("model")
    if requested is None:
        return config, name
    diffs = architecture_differences(config, requested)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f" ... (+{len(diffs) - 6})" if len(diffs) > 6 else "")
        raise CheckpointError(
            f"{path}: the checkpoint holds {name or 'a network'} ({describe(config)}) but the request is "
            f"{requested_name or 'another network'} ({describe(requested)}): {shown}. Drop model=/memory= to use "
            f"the checkpoint's own network.")
    gap = (requested.get("memory") or {}).get("test_gap")
    if gap is not None and "memory" in config:
        config["memory"] = {**config["memory"], "test_gap": gap}
    return config, name


def load_network(path: str | Path, model: str | None = None, overrides: tuple[str, ...] | list[str] = ()):
    """Build the network a checkpoint holds (its stored config, or ``model`` for older files) and load it.

    ``model`` / ``overrides`` given for a checkpoint that stores its config must agree with it (see
    ``resolve_network_config``). Returns the network in eval mode, on the CPU.
    """
    from mavos.registry import network_config

    ckpt = read_checkpoint(path)
    requested = network_config(model or "mavos_mbv2", overrides) if (model or overrides) else None
    config, _ = resolve_network_config(path, ckpt, requested, model)
    net = build_checkpoint_network(path, config)
    load_state(net, network_state(ckpt, path), path)
    return net.eval()


def without_pretrained_file(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored network config without its encoder's ImageNet file (the checkpoint's weights replace it)."""
    config = dict(config)
    if isinstance(config.get("encoder"), Mapping) and config["encoder"].get("weights") is not None:
        config["encoder"] = {**config["encoder"], "weights": None}
    return config


def build_checkpoint_network(path: str | Path, config: Mapping[str, Any]):
    """Build the network a checkpoint's config describes; a config that cannot be built names the file and key.

    The encoder's pretrained-weights file (``encoder.weights``, ImageNet's, used when training started) is not
    read: the checkpoint's own weights replace it, and the file is rarely where the checkpoint travels to."""
    from mavos.registry import build_network

    config = without_pretrained_file(config)
    try:
        return build_network(config)
    except Exception as e:
        targets = {k: v for k, v in _flatten(config).items() if k.endswith("_target_")}
        bad = [f"{k}={v}" for k, v in targets.items() if not _importable(str(v))]
        where = f" (unknown {', '.join(bad)})" if bad else ""
        root = e
        while root.__cause__ is not None:  # Hydra wraps the constructor's error: say what it was
            root = root.__cause__
        why = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if root is not e:
            why += f" ({type(root).__name__}: {str(root).splitlines()[0][:300] if str(root) else ''})"
        raise CheckpointError(f"{path}: the network config stored in {NETWORK_KEY!r} cannot be built{where}: "
                              f"{why}") from e


def _importable(target: str) -> bool:
    import importlib

    module, _, name = target.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), name)
    except Exception:
        return False


def load_network_weights(net: nn.Module, path: str | Path) -> None:
    """Load a checkpoint's weights into an existing network, strictly."""
    load_state(net, read_network_state(path), path)


def load_state(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> None:
    """Load weights strictly; a mismatch lists missing / unexpected / wrong-shape keys and the file."""
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
        memory = type(getattr(net, "memory", None)).__name__
        hint = convert_first(path, state) or (" Pick the model config the checkpoint was trained with (model=..., "
                                              "memory=...).")
        raise CheckpointError(f"{path}: checkpoint does not fit the model ({memory} memory, "
                              f"{sum(p.numel() for p in net.parameters()):,} parameters): " + "; ".join(parts) +
                              "." + hint)
    net.load_state_dict(state, strict=True)
