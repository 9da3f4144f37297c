"""train.py's body: build everything from the Hydra config and run Lightning's fit loop."""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from mavos.checkpoints.loading import load_network_weights

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group (a dict of configs; empty or null -> [])."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def resolve_resume(ckpt_path: str | None, output_dir: str) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        path = Path(output_dir) / "checkpoints" / "last.ckpt"
    else:
        path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint to resume from does not exist")
    return str(path)


def train(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    datamodule = hydra.utils.instantiate(cfg.data.module)
    model = hydra.utils.instantiate(cfg.model)
    if model.hparams.total_steps is None and cfg.trainer.get("max_steps", -1) > 0:
        model.hparams.total_steps = int(cfg.trainer.max_steps)
    if cfg.get("init_from"):
        load_network_weights(model.net, cfg.init_from)
        log.info("initialised the network from %s", cfg.init_from)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # nothing to report learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    n_params = sum(p.numel() for p in model.net.parameters())
    log.info("network: %s parameters; memory policy %s", f"{n_params:,}", type(model.net.memory).__name__)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_resume(cfg.get("ckpt_path"), cfg.paths.output_dir))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = None
    for cb in callbacks:
        if isinstance(cb, L.pytorch.callbacks.ModelCheckpoint):
            best = cb.last_model_path or cb.best_model_path
    if best:
        log.info("checkpoint: %s", best)
    metrics["_checkpoint"] = best
    return metrics
