"""Test-only Lightning callbacks that record what a training process did, for tests that kill and resume it."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class ResumeProbe(L.Callback):
    """Appends each finished step to ``<out>/steps.txt`` and, when training starts, dumps the restored state
    (step, optimizer moments, scheduler position, learning rates, EMA) to ``<out>/start-<n>.json``."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)

    def on_train_start(self, trainer, module):
        opt = trainer.optimizers[0]
        moments = [float(s["exp_avg"].double().sum()) for s in opt.state.values() if "exp_avg" in s]
        ema = next((c for c in trainer.callbacks if type(c).__name__ == "RecipeEMA"), None)
        state = {
            "global_step": int(trainer.global_step),
            "exp_avg_sum": sum(moments), "moments": len(moments),
            "scheduler_last_epoch": int(trainer.lr_scheduler_configs[0].scheduler.last_epoch),
            "lrs": [g["lr"] for g in opt.param_groups],
            "ema_n_averaged": int(ema._average_model.n_averaged) if ema is not None else None,
            "ema_sum": float(sum(p.double().sum() for p in ema._average_model.module.net.parameters()))
            if ema is not None else None,
        }
        n = len(list(self.out.glob("start-*.json")))
        (self.out / f"start-{n}.json").write_text(json.dumps(state))

    def on_train_batch_end(self, trainer, module, *args):
        lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
        with open(self.out / "steps.txt", "a") as f:
            f.write(json.dumps({"step": int(trainer.global_step), "lrs": lrs}) + "\n")
            f.flush()


def checkpoint_state(path: str | Path) -> dict:
    """The same numbers as ``ResumeProbe.on_train_start``, read from a checkpoint file."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    opt = ckpt["optimizer_states"][0]
    moments = [float(s["exp_avg"].double().sum()) for s in opt["state"].values() if "exp_avg" in s]
    averaged = ckpt.get("averaging_state")
    ema_sum = None
    if averaged is not None:
        ema_sum = float(sum(v.double().sum() for k, v in ckpt["state_dict"].items()
                            if k.startswith("net.") and v.is_floating_point() and not k.endswith("num_batches_tracked")
                            and not k.endswith(("running_mean", "running_var"))))
    return {
        "global_step": int(ckpt["global_step"]), "exp_avg_sum": sum(moments), "moments": len(moments),
        "scheduler_last_epoch": int(ckpt["lr_schedulers"][0]["last_epoch"]),
        "lrs": [g["lr"] for g in opt["param_groups"]],
        "ema_n_averaged": int(averaged["n_averaged"]) if averaged is not None else None,
        "ema_sum": ema_sum,
    }
