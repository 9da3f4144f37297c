"""Parity with the official code: the official model and ours, built from the same random weights (ours through
``mavos.checkpoints.convert``), run over the same frames; prints the per-frame max |logit difference|.

    python experiments/official_parity.py --mavos /path/to/MAVOS --aot /path/to/aot-benchmark

``--mavos``: your own checkout of github.com/Amshaker/MAVOS (for mavos_mbv2, mavos_r50, mavos_swinb);
``--aot``: your checkout of github.com/yoxu515/aot-benchmark (for deaot_mbv2, and for the ``utils`` package
that the MAVOS repository imports but does not contain). Nothing of either is copied into this repository:
each model runs in a child process with that checkout on ``sys.path``. Both run on the CPU in float32; the
official local attention uses its pure-PyTorch path when ``spatial_correlation_sampler`` is not installed.

The video: ``--frames`` frames of smooth random noise with two moving rectangles as objects; the first frame
is the reference, every later frame is propagated, and then memorised with its ground-truth mask (so both
sides always share the same memory masks); the long-term gap is ``--gap`` (2: MCA fuses from frame 4 on).
Weights are drawn per state-dict key (seeded by the key's name) with norms and biases perturbed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# our model name -> (official checkout, official model config under configs/models, input size)
MODELS = {
    "mavos_mbv2": ("mavos", "mavos", (97, 129)),
    "mavos_r50": ("mavos", "r50_mavos", (97, 129)),
    "mavos_swinb": ("mavos", "swinb_mavos", (96, 128)),
    "deaot_mbv2": ("aot", "deaotl", (97, 129)),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def seeded_state(state: dict) -> dict:
    """Random tensors for every floating key, seeded by the key's name (same idea as tests/golden_scenario)."""
    import torch

    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            t = 0.5 + torch.rand(value.shape, generator=gen)
        elif leaf == "running_mean":
            t = 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() <= 1 and leaf == "weight":
            t = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() <= 1:
            t = 0.05 * torch.randn(value.shape, generator=gen)
        elif key.endswith("relative_position_bias_table"):
            t = 0.02 * torch.randn(value.shape, generator=gen)
        else:
            t = torch.randn(value.shape, generator=gen) / value[0].numel() ** 0.5
        out[key] = t.to(value.dtype)
    return out


def video(size: tuple[int, int], frames: int):
    import torch

    h, w = size
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(frames, 3, h // 8 + 2, w // 8 + 2, generator=gen)
    imgs = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    imgs = (imgs + 0.05 * torch.rand(frames, 3, h, w, generator=gen)).clamp(0, 1)
    masks = torch.zeros(frames, h, w, dtype=torch.long)
    for t in range(frames):
        y, x = 4 + 2 * t, 6 + 3 * t
        masks[t, y:y + h // 3, x:x + w // 4] = 1
        masks[t, h // 2:h // 2 + h // 4, w - x - w // 3:w - x] = 2
    return imgs, masks


def run_official(model_cfg: str, size, frames: int, gap: int):
    """Official model (its checkout on sys.path) -> (state dict it ran with, stride-4 logits per frame)."""
    import torch
    from configs.default import DefaultEngineConfig
    from networks.engines import build_engine
    from networks.models import build_vos_model

    cfg = DefaultEngineConfig("parity", model_cfg)
    model = build_vos_model(cfg.MODEL_VOS, cfg).eval()
    model.load_state_dict(seeded_state(model.state_dict()))
    engine = build_engine(cfg.MODEL_ENGINE, phase="eval", aot_model=model, gpu_id=0, long_term_mem_gap=gap,
                          short_term_mem_skip=1)
    imgs, masks = video(size, frames)
    norm = (imgs - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    logits = []
    with torch.no_grad():
        engine.add_reference_frame(norm[:1], masks[:1, None].float(), obj_nums=[2], frame_step=0)
        for t in range(1, frames):
            engine.match_propogate_one_frame(norm[t:t + 1])
            logits.append(engine.decode_current_logits(None)[:, :3].clone())
            engine.update_memory(masks[t:t + 1, None].float())
    return model.state_dict(), logits


def run_ours(name: str, official_state: dict, size, frames: int, gap: int):
    import torch

    from mavos.checkpoints.convert import convert_official_state_dict, fit_to_model
    from mavos.inference.tracker import ObjectTracker, one_hot_mask
    from mavos.model.memory import MCAMemory
    from mavos.registry import build_network

    net = build_network(name).eval()
    converted, unmapped = convert_official_state_dict(official_state, with_mca=isinstance(net.memory, MCAMemory))
    fitted, missing, _ = fit_to_model(converted, net.state_dict(), "official model")
    if missing:
        raise SystemExit(f"{name}: {len(missing)} tensors not produced by the converter: {missing[:5]}")
    net.load_state_dict(fitted)
    imgs, masks = video(size, frames)
    tracker = ObjectTracker(net, [2], long_term_gap=gap)
    logits = []
    with torch.no_grad():
        tracker.reference(net.encode(imgs[:1]), one_hot_mask(masks[:1], net.max_objects))
        for t in range(1, frames):
            logits.append(tracker.propagate(net.encode(imgs[t:t + 1]))[:, :3].clone())
            tracker.memorize(one_hot_mask(masks[t:t + 1], net.max_objects))
    return logits


def child(args) -> None:
    """One model in this process: the official checkout first on sys.path, then this repository."""
    import torch

    torch.set_num_threads(args.threads)
    side, model_cfg, size = MODELS[args.child]
    roots = [args.mavos, args.aot] if side == "mavos" else [args.aot]
    sys.path[:0] = [str(Path(r).resolve()) for r in roots if r]
    official_state, theirs = run_official(model_cfg, size, args.frames, args.gap)
    sys.path.insert(0, str(ROOT))
    ours = run_ours(args.child, official_state, size, args.frames, args.gap)
    diffs = [float((a - b).abs().max()) for a, b in zip(theirs, ours)]
    scale = max(float(a.abs().max()) for a in theirs)
    print(json.dumps({"model": args.child, "size": list(size), "diffs": diffs, "logit_scale": scale}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mavos", type=Path, help="checkout of Amshaker/MAVOS")
    ap.add_argument("--aot", type=Path, help="checkout of yoxu515/aot-benchmark")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--gap", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=list(MODELS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.frames < 2:
        raise SystemExit(f"--frames {args.frames}: needs at least 2 (the reference frame and one to compare)")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    for checkout, what in ((args.mavos, "--mavos"), (args.aot, "--aot")):
        if checkout is not None and not (checkout / "networks").is_dir():
            raise SystemExit(f"{what} {checkout}: not a checkout of the official code (no networks/ folder)")
    if args.aot is None:
        raise SystemExit("--aot is required (DeAOT, and the utils package the MAVOS repository imports)")
    if args.mavos is None and any(MODELS[m][0] == "mavos" for m in names):
        raise SystemExit("--mavos is required for the MAVOS models")
    print(f"{args.frames} frames, 2 objects, long-term gap {args.gap}, float32 CPU; per-frame max |logit diff| "
          f"(frames 1..{args.frames - 1}, background + 2 objects, stride 4)")
    worst = 0.0
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--frames", str(args.frames),
               "--gap", str(args.gap), "--threads", str(args.threads), "--aot", str(args.aot)]
        if args.mavos:
            cmd += ["--mavos", str(args.mavos)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        worst = max(worst, max(r["diffs"]))
        print(f"{name:<12} {r['size'][0]}x{r['size'][1]}  " + " ".join(f"{d:.1e}" for d in r["diffs"])
              + f"   (max {max(r['diffs']):.1e}, logits up to {r['logit_scale']:.1f})", flush=True)
    print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
