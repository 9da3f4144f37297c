"""Official MAVOS / DeAOT checkpoints -> our state dict.

The released models (Amshaker/MAVOS, yoxu515/aot-benchmark) store the same tensors we use, under
other module names; no tensor needs a new layout (both sides use Linear where the other does,
1x1 convs where the other does, the same relative-position index layout). The mapping is therefore
a short, ordered table of regex rename rules, applied to every key; a key no rule claims is
reported as unmapped rather than guessed.
"""
from __future__ import annotations

import re
import torch

# The official MCA blocks sit at long_term_memory_attention.<layer>.<slot> with slot 0 = key,
# 1 = value, 2 = (ID key, unused: None), 3 = ID value.
_MCA_SLOTS = {"0": "key", "1": "value", "3": "id_value"}

# (pattern, replacement), applied in order; every rule that matches rewrites the key.
RENAME_RULES: list[tuple[str, str]] = [
    # encoder: torchvision MobileNetV2 / ResNet-50 already share the official names; the Swin blocks
    # use torchvision's MLP (Linear at indices 0 and 3) where the original Swin has fc1 / fc2.
    (r"^(encoder\.layers\.\d+\.blocks\.\d+\.mlp)\.fc1\.", r"\1.0."),
    (r"^(encoder\.layers\.\d+\.blocks\.\d+\.mlp)\.fc2\.", r"\1.3."),
    # identity bank
    (r"^patch_wise_id_bank\.", "id_bank.conv."),
    (r"^id_norm\.", "id_bank.norm."),
    # propagation (official "LSTT")
    (r"^LSTT\.decoder_norms\.0\.gn\.", "propagator.output_norm."),
    (r"^LSTT\.layers\.", "propagator.layers."),
    (r"^(propagator\.layers\.\d+\.)linear_QV\.", r"\1linear_qv."),
    (r"^(propagator\.layers\.\d+\.)linear_U\.", r"\1linear_u."),
    (r"^(propagator\.layers\.\d+\.)linear_ID_V\.", r"\1linear_id_v."),
    (r"^(propagator\.layers\.\d+\.)linear_ID_U\.", r"\1linear_id_u."),
    (r"^(propagator\.layers\.\d+\.self_attn\.)linear_(QK|V1|V2|U1|U2)\.",
     lambda m: f"{m[1]}linear_{m[2].lower()}."),
    (r"^(propagator\.layers\.\d+\.short_term_attn\.)relative_emb_k\.", r"\1relative_emb."),
    # decoder: ConvGN units call their GroupNorm "norm"
    (r"^(decoder\.conv_\w+)\.gn\.", r"\1.norm."),
    # MCA memory: long_term_memory_attention.L.S.joint_modulation.* -> memory.fusers.L.<slot>.*
    (r"^long_term_memory_attention\.(\d+)\.([013])\.joint_modulation\.",
     lambda m: f"memory.fusers.{m[1]}.{_MCA_SLOTS[m[2]]}."),
    (r"^(memory\.fusers\.\d+\.\w+\.)norm_l\.", r"\1norm_new."),
    (r"^(memory\.fusers\.\d+\.\w+\.)norm_c\.", r"\1norm_old."),
    (r"^(memory\.fusers\.\d+\.\w+\.)norm2\.", r"\1norm_mlp."),
    (r"^(memory\.fusers\.\d+\.\w+\.)attn\.(q|k|proj)\.", r"\1\2."),
    (r"^(memory\.fusers\.\d+\.\w+\.)attn\.f_context\.", r"\1context."),
    (r"^(memory\.fusers\.\d+\.\w+\.)attn\.h\.", r"\1modulator."),
    (r"^(memory\.fusers\.\d+\.\w+\.)attn\.focal_layers\.(\d+)\.0\.", r"\1focal.\2."),
    (r"^(memory\.fusers\.\d+\.\w+\.)mlp\.fc1\.", r"\1mlp.0."),
    (r"^(memory\.fusers\.\d+\.\w+\.)mlp\.fc2\.", r"\1mlp.2."),
]
_COMPILED = [(re.compile(p), r) for p, r in RENAME_RULES]

# Prefixes of keys that are ours as they stand (after the rules above).
_OUR_PREFIXES = ("encoder.", "encoder_projector.", "id_bank.", "propagator.", "decoder.", "memory.fusers.")
# Official-only tensors with no counterpart in our network (recomputed or unused).
_IGNORED = (
    re.compile(r"(^|\.)num_batches_tracked$"),
    re.compile(r"^pos_generator\."),
)

_WRAPPERS = ("state_dict", "model", "ema", "ema_state_dict", "network", "net")


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Peel ``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"ema": ...}`` wrappers (first of ``_WRAPPERS``
    that holds a dict; the official EMA files are plain ``{"state_dict": ...}`` files) and strip
    DataParallel ``module.`` prefixes."""
    while isinstance(obj, dict) and not _holds_tensors(obj):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"no state dict found; top-level keys are {sorted(map(str, obj))[:10]}")
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict of tensors, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


def _holds_tensors(d: dict) -> bool:
    return bool(d) and any(isinstance(v, torch.Tensor) for v in d.values())


def rename_official_key(key: str) -> str | None:
    """Our name for one official key, or None when no rule gives a key of our network."""
    for pattern, repl in _COMPILED:
        key = pattern.sub(repl, key)
    return key if key.startswith(_OUR_PREFIXES) else None


def convert_official_state_dict(state: dict, with_mca: bool = True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an official checkpoint (any wrapper, ``module.`` prefixes allowed) to our key names.

    Returns (our state dict, official keys that have no counterpart). Keys the official code keeps but
    our network recomputes (BatchNorm ``num_batches_tracked``) are dropped silently. ``with_mca``: the
    target network has MCA memory blocks (MAVOS); for DeAOT any MCA weights are reported as unmapped.
    """
    ours: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in unwrap_state_dict(state).items():
        if any(p.search(key) for p in _IGNORED):
            continue
        new = rename_official_key(key)
        if new is None or (not with_mca and new.startswith("memory.fusers.")) or not isinstance(value, torch.Tensor):
            unmapped.append(key)
            continue
        if new in ours:
            raise ValueError(f"two official keys map to {new!r} (second: {key!r})")
        ours[new] = value
    return ours, unmapped


def fit_to_model(converted: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                 source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Check converted tensors against the model's state dict (``reference``).

    A Linear <-> 1x1-conv difference (same values, trailing singleton dims) is reshaped and dtypes are
    cast to the model's; any other shape difference raises ValueError naming ``source`` and the keys.
    Returns (fitted state, keys the model has but the checkpoint lacks, checkpoint keys the model lacks).
    """
    fitted: dict[str, torch.Tensor] = {}
    wrong = []
    for key, value in converted.items():
        if key not in reference:
            continue
        target = reference[key]
        if value.shape != target.shape:
            if value.numel() == target.numel() and _squeeze_ones(value.shape) == _squeeze_ones(target.shape):
                value = value.reshape(target.shape)
            else:
                wrong.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
                continue
        fitted[key] = value.to(target.dtype)
    if wrong:
        more = f" ... (+{len(wrong) - 8} more)" if len(wrong) > 8 else ""
        raise ValueError(f"{source}: {len(wrong)} tensors do not fit the model: " + "; ".join(wrong[:8]) + more)
    missing = sorted(set(reference) - set(fitted))
    unexpected = sorted(set(converted) - set(reference))
    return fitted, missing, unexpected


def _squeeze_ones(shape: torch.Size) -> tuple[int, ...]:
    dims = list(shape)
    while dims and dims[-1] == 1:
        dims.pop()
    return tuple(dims)
