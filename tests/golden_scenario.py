"""The scenario behind ``tests/data/golden_logits.npz``: seeded weights, frames, masks and the loop that ran them.

The golden logits were recorded with the code at commit d563f39 (before the speed work), whose logits matched
the official MAVOS / aot-benchmark code to ~3e-6; ``tests/test_golden.py`` checks that today's code still
produces them. Weights are drawn per state-dict key (seeded by the key's name), so they do not depend on the
order in which modules are built, and norms/biases are perturbed so that nothing is trivially zero or one.

Regenerate only on purpose (it overwrites the reference): ``python -m tests.golden_scenario``.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_logits.npz"

# (name, model, overrides, (H, W), frames): sizes are 16k+1 (16k for Swin-B); 161x289 gives an 11x19 token map,
# wider than the 15x15 short-term window, so the window's borders matter.
CASES = [
    ("mavos_mbv2", "mavos_mbv2", (), (97, 129), 8),
    ("mavos_r50", "mavos_r50", (), (97, 129), 8),
    ("mavos_swinb", "mavos_swinb", (), (96, 128), 8),
    ("deaot_mbv2", "deaot_mbv2", (), (97, 129), 8),
    ("mavos_mbv2_wide", "mavos_mbv2", (), (161, 289), 6),
]
SESSION_CASE = ("session_mavos_mbv2", "mavos_mbv2", (49, 65), 7)
GAP = 2
OBJECTS = 2


def seeded_weights(net: torch.nn.Module) -> torch.nn.Module:
    """Overwrite every floating tensor of the state dict from a generator seeded by its key's name."""
    state = net.state_dict()
    new = {}
    for key, value in state.items():
        if not value.is_floating_point():
            new[key] = value
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            t = 0.5 + torch.rand(value.shape, generator=gen)
        elif leaf == "running_mean":
            t = 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() <= 1 and ("norm" in key or leaf == "weight"):  # norm scales
            t = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() <= 1:  # biases
            t = 0.05 * torch.randn(value.shape, generator=gen)
        elif key.endswith("relative_position_bias_table"):
            t = 0.02 * torch.randn(value.shape, generator=gen)
        else:
            fan_in = value[0].numel()
            t = torch.randn(value.shape, generator=gen) / fan_in ** 0.5
        new[key] = t.to(value.dtype)
    net.load_state_dict(new)
    return net.eval()


def build_seeded(model: str, overrides=()):
    from mavos.registry import build_network

    return seeded_weights(build_network(model, list(overrides)))


def video(size: tuple[int, int], frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (T, 3, H, W) in [0, 1] (smooth noise) and masks (T, H, W) with two moving rectangles."""
    h, w = size
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(frames, 3, h // 8 + 2, w // 8 + 2, generator=gen)
    imgs = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    imgs = (imgs + 0.05 * torch.rand(frames, 3, h, w, generator=gen)).clamp(0, 1)
    masks = torch.zeros(frames, h, w, dtype=torch.long)
    for t in range(frames):
        y, x = 4 + 2 * t, 6 + 3 * t
        masks[t, y:y + h // 3, x:x + w // 4] = 1
        masks[t, h // 2:h // 2 + h // 4, w - x - w // 3:w - x] = 2
    return imgs, masks


def tracker_logits(net, size, frames) -> np.ndarray:
    """Reference on frame 0, then propagate + memorize the ground-truth mask (long-term gap 2, MCA fuses from
    the second write). Returns the stride-4 logits of background and both objects, (T, 3, h, w)."""
    from mavos.inference.tracker import ObjectTracker, one_hot_mask

    imgs, masks = video(size, frames)
    tracker = ObjectTracker(net, [OBJECTS], long_term_gap=GAP)
    out = []
    with torch.no_grad():
        out.append(tracker.reference(net.encode(imgs[:1]), one_hot_mask(masks[:1], net.max_objects)))
        for t in range(1, frames):
            out.append(tracker.propagate(net.encode(imgs[t:t + 1])))
            tracker.memorize(one_hot_mask(masks[t:t + 1], net.max_objects))
    return torch.cat(out)[:, : OBJECTS + 1].numpy()


def session_probs(net, size, frames) -> np.ndarray:
    """``InferenceSession`` on uint8 frames, its own predictions as memory: probabilities (T-1, 3, H, W)."""
    from mavos.inference.session import InferenceSession

    imgs, masks = video(size, frames, seed=1)
    rgb = (imgs * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    session = InferenceSession(net, long_term_gap=GAP)
    session.add_objects(rgb[0], masks[0].numpy())
    return np.stack([session.step(rgb[t]).numpy() for t in range(1, frames)])


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    arrays = {}
    for name, model, overrides, size, frames in CASES:
        arrays[name] = tracker_logits(build_seeded(model, overrides), size, frames)
        print(name, arrays[name].shape, float(np.abs(arrays[name]).max()))
    name, model, size, frames = SESSION_CASE
    arrays[name] = session_probs(build_seeded(model), size, frames)
    print(name, arrays[name].shape)
    np.savez(GOLDEN, **{k: v.astype(np.float32) for k, v in arrays.items()})
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
