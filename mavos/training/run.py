"""train.py's body: build everything from the Hydra config, check it, run Lightning's fit loop, report.

A run lives in one folder, ``logs/train/runs/<run_name>`` (a time stamp unless ``run_name=`` is given), and
every resume of it continues there (``ckpt_path=last`` finds the newest run with a ``last.ckpt``; see
``rundir``). Before training starts the config is checked: the run folder (a new run never overwrites an
earlier one's checkpoints), the checkpoint to resume from (readable, a training checkpoint, the same network),
the validation set (videos with ground truth) and every monitored metric.
"""
from __future__ import annotations

import json
import logging
import numbers
import os
import uuid
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from mavos.checkpoints.loading import (CheckpointError, architecture_differences, load_network_weights,
                                       network_record, network_state, read_checkpoint, stored_network)
from mavos.data.io import atomic_save, remove_stale_temporaries
from mavos.inference.session import check_session_config
from mavos.registry import ConfigError, describe
from mavos.training.rundir import (earlier_checkpoints, find_last_checkpoint, newest_checkpoint, resumable_checkpoints,
                                   run_of)

log = logging.getLogger(__name__)

# what the module logs; a monitor outside this list is never logged (ModelCheckpoint / EarlyStopping)
LOGGED_METRICS = ("val/J&F", "val/J", "val/F", "val/fps", "train/loss", "train/frame_loss", "train/aux_loss", "step")


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group (a dict of configs; empty or null -> [])."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def hydra_config():
    """The running Hydra app's own config (``HydraConfig``), or None outside one (tests, scripts)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def model_choice() -> str | None:
    hc = hydra_config()
    return hc.runtime.choices.get("model") if hc is not None else None


# ---------------------------------------------------------------- checks before training

def resolve_resume(ckpt_path: str | None, output_dir: str | Path, runs_dir: str | Path) -> str | None:
    """The checkpoint to resume from: a path, or ``last``: the newer of this run's ``checkpoints/last.ckpt`` and
    its SLURM preemption checkpoints (``hpc_ckpt_<n>.ckpt``), so a job resumed after a preemption loses nothing
    that the preemption saved."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        path = newest_checkpoint(resumable_checkpoints(Path(output_dir)))
        if path is None:
            found = find_last_checkpoint(runs_dir)
            searched = (f"{Path(output_dir) / 'checkpoints' / 'last.ckpt'} and {Path(output_dir) / 'hpc_ckpt_*.ckpt'}"
                        + (f", and every run under {runs_dir}" if found is None else ""))
            raise CheckpointError(f"ckpt_path=last: no checkpoint to resume from (searched {searched}); start a new "
                                  f"run without ckpt_path, or name the run to resume with run_name=<name> (in a "
                                  f"multirun: run_name=<its name>, or hydra.sweep.dir=<its sweep folder>)")
        return str(path)
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint to resume from does not exist")
    return str(path)


def check_run_folder(output_dir: Path, resume: str | None) -> None:
    """A new run never overwrites another's checkpoints: a named run folder (``run_name=``, a named multirun's
    job) that already holds checkpoints is resumed (``ckpt_path=last``) or refused, naming the files (Lightning
    would overwrite ``last.ckpt`` and any same-named best checkpoint). Allowed: resuming from a checkpoint of this
    folder, and a requeued SLURM job with no ``ckpt_path``, which Lightning restores from its ``hpc_ckpt_<n>.ckpt``
    itself."""
    existing = earlier_checkpoints(output_dir)
    if not existing:
        return
    if resume is not None and run_of(Path(resume)) == output_dir.resolve():
        return
    if resume is None and SLURMEnvironment.detect() and any(p.name.startswith("hpc_ckpt_") for p in existing):
        return
    names = ", ".join(str(p.relative_to(output_dir)) for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
    source = f"resuming from {resume}" if resume else "a new run"
    raise ConfigError(f"{output_dir}: this run folder already holds an earlier run's checkpoints ({names}); {source} "
                      f"here would overwrite them. Resume that run with ckpt_path=last, give this one another "
                      f"run_name (or none: a time-stamped folder), or remove the folder first")


def check_resume_checkpoint(path: str, net_config: dict, model_name: str | None) -> None:
    """Refuse, before training, a file that is not a training checkpoint of this network (naming both)."""
    ckpt = read_checkpoint(path)
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint (no optimizer or loop state; a converted or "
                              f"weights-only file): start from its weights with init_from={path} instead")
    record = stored_network(ckpt)
    if record is not None:
        diffs = architecture_differences(record["config"], net_config)
        if diffs:
            raise CheckpointError(
                f"{path}: the checkpoint holds {record.get('model') or 'a network'} ({describe(record['config'])}) "
                f"but this run trains {model_name or 'another network'} ({describe(net_config)}): "
                + "; ".join(diffs[:5]))
        return
    from mavos.checkpoints.loading import load_state
    from mavos.registry import build_network

    try:
        load_state(build_network(net_config), network_state(ckpt, path), path)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (an older checkpoint without its network config; this run trains "
                              f"{model_name or 'the configured model'}: {describe(net_config)})") from None


def check_monitors(callbacks: list, validates: bool) -> None:
    """Every monitored metric must be one the run logs, and val/* needs validation."""
    for cb in callbacks:
        monitor = getattr(cb, "monitor", None)
        if not monitor:
            continue
        name = type(cb).__name__
        if monitor not in LOGGED_METRICS:
            raise ConfigError(f"callbacks: {name} monitors {monitor!r}, which is never logged; choose one of "
                              f"{', '.join(LOGGED_METRICS)}")
        if monitor.startswith("val/") and not validates:
            raise ConfigError(f"callbacks: {name} monitors {monitor!r} but this run does not validate "
                              f"(data.val_videos=0 or no val set): set callbacks.model_checkpoint.monitor=null or "
                              f"give validation videos")


def warn_frozen_random_encoder(encoder: dict, init_from: str | None, resume: str | None) -> bool:
    """The recipe freezes the encoder's BatchNorm and first stages because they come from ImageNet (the PRE
    stage) or the PRE stage's checkpoint (init_from): without either they stay at their random initialisation
    for the whole run. Warns (returns True) then; fine for a smoke run, wrong for the recipe."""
    frozen = [f"{key}={encoder[key]}" for key in ("frozen_bn", "freeze_at") if encoder.get(key)]
    if encoder.get("weights") or init_from or resume or not frozen:
        return False
    log.warning("model.net.encoder: %s with no pretrained weights (model.net.encoder.weights=null, no init_from): "
                "the frozen layers keep their random initialisation; give the ImageNet file or init_from=<PRE "
                "stage checkpoint>, or set model.net.encoder.frozen_bn=false model.net.encoder.freeze_at=0",
                " and ".join(frozen))
    return True


def hydra_mode() -> str | None:
    """``RUN`` or ``MULTIRUN`` inside a Hydra app, else None."""
    hc = hydra_config()
    return hc.mode.name if hc is not None and hc.mode is not None else None


def check_multirun_launch(strategy, mode: str | None) -> None:
    """Lightning's DDP starts its other processes by running this command line again (``-m`` and the sweep's
    lists included), so in a multirun every one of them would start a sweep of its own. Refused, naming the
    ways that work: processes started by SLURM or torchrun (one per GPU), or spawned (``ddp_spawn``)."""
    launcher = getattr(strategy, "launcher", None)
    if mode != "MULTIRUN" or type(launcher).__name__ != "_SubprocessScriptLauncher":
        return
    raise ConfigError(f"trainer.strategy={type(strategy).__name__} with {strategy.num_processes} processes in a "
                      f"multirun: Lightning would start the other processes by running the whole sweep again; use "
                      f"hydra/launcher=slurm (one task per GPU), trainer.strategy=ddp_spawn, or a single run per "
                      f"command")


def sweeper_choice() -> str | None:
    """The Hydra sweeper of this run (``optuna`` for hparams_search=optuna), or None outside Hydra."""
    hc = hydra_config()
    return hc.runtime.choices.get("hydra/sweeper") if hc is not None else None


def check_optimized_metric(metric: str | None, sweeper: str | None, validates: bool) -> None:
    """An optimising sweeper (Optuna) needs every trial to return ``optimized_metric``: one never logged, or a
    val/* metric in a run that does not validate, would fail every trial after it trained (the study only
    fails at its end, with no trial completed), so the first trial refuses it before training."""
    if sweeper != "optuna":
        return
    if metric not in LOGGED_METRICS:
        raise ConfigError(f"optimized_metric={metric!r}: the sweeper maximises it, but it is never logged; choose one "
                          f"of {', '.join(LOGGED_METRICS)}")
    if metric.startswith("val/") and not validates:
        raise ConfigError(f"optimized_metric={metric!r}: the sweeper maximises it, but this run does not validate "
                          f"(data.val_videos=0, data=static or no val set): give validation videos")


def check_training_config(cfg: DictConfig) -> None:
    """Numbers a run cannot mean, refused before anything loads, naming the key (Lightning or PyTorch would stop
    with a traceback, some only after the first steps): ``session.*`` (validation segments videos as evaluate.py
    does), a batch of no clips, a learning rate <= 0, validation every 0 steps, a negative ``max_steps``."""
    if cfg.get("session") is not None:
        check_session_config(OmegaConf.to_container(cfg.session, resolve=True))

    def refuse(key: str, value, fits, what: str) -> None:
        if value is not None and (isinstance(value, bool) or not fits(value)):
            raise ConfigError(f"{key}={value!r}: expected {what}")

    def whole(value) -> bool:
        return isinstance(value, numbers.Integral)

    module = cfg.data.get("module") or {}
    refuse("data.module.batch_size", module.get("batch_size"), lambda v: whole(v) and v >= 1,
           "a whole number >= 1 (clips per step)")
    refuse("model.lr", cfg.model.get("lr"), lambda v: isinstance(v, numbers.Real) and v > 0, "a learning rate > 0")
    refuse("trainer.val_check_interval", cfg.trainer.get("val_check_interval"),
           lambda v: v >= 1 if whole(v) else isinstance(v, float) and 0 < v <= 1,
           "a step count >= 1, or a fraction of an epoch in (0, 1]")
    refuse("trainer.max_steps", cfg.trainer.get("max_steps"), lambda v: whole(v) and (v >= 1 or v == -1),
           "a step count >= 1, or -1 for no limit")


def check_validation(datamodule, protocol: str) -> None:
    """Validation videos must exist and carry ground truth under the data config's protocol."""
    from mavos.metrics.protocols import plan_for_record

    if protocol == "none":
        raise ConfigError("data.val_protocol / data.protocol is none (a server-scored set has no ground truth) but "
                          "training validates: point data.module.train_val_reader at videos with ground truth (e.g. a "
                          "held-out slice of the train split, as data=ytvos does) or set data.val_videos=0")
    videos = datamodule.validation_videos()
    if not videos:
        raise ConfigError("data.val_videos selects no video to validate on; set data.val_videos=0 to train without "
                          "validation")
    for record in videos:
        plan = plan_for_record(record, protocol)
        if plan is None or not plan.frame_indices:
            gt = record.gt_annotations or record.annotations
            where = Path(next(iter(gt.values()))).parent if gt else record.name
            raise ConfigError(f"{where}: validation video '{record.name}' has no ground truth to score beyond its "
                              f"first frame (protocol {protocol}); validate on a set with ground truth")


def checkpoint_without_validation(cfg: DictConfig) -> None:
    """No validation (``data.val_videos=0``): keep the newest checkpoints every ``val_check_interval`` steps
    instead of the best by val/J&F (nothing would be logged to choose by); each of them refreshes last.ckpt,
    overwriting one an earlier run left in the folder (Lightning would write ``last-v1.ckpt`` beside it, which
    ``ckpt_path=last`` does not read), as the last-checkpoint callback with validation does."""
    callbacks = cfg.get("callbacks") or {}
    node = callbacks.get("model_checkpoint")
    if node is None or not str(node.get("monitor") or "").startswith("val/"):
        return
    every = int(cfg.trainer.get("val_check_interval") or 1000)
    with open_dict(cfg):
        node.monitor, node.mode, node.filename = "step", "max", "step_{step:06d}"
        node.every_n_train_steps, node.save_last, node.enable_version_counter = every, True, False
        callbacks.last_checkpoint = None
    log.info("no validation: a checkpoint every %d steps (trainer.val_check_interval), the %s newest kept",
             every, node.get("save_top_k"))


# ---------------------------------------------------------------- W&B run identity

def launch_rank() -> int:
    """This process's global rank as its launcher gave it (torchrun / Lightning's DDP children: RANK; srun, one
    task per GPU: SLURM_PROCID), before Lightning knows it; 0 for a single process."""
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def wandb_run_id(output_dir: Path) -> str | None:
    """A stable W&B run id for this run folder: resumed runs continue the same W&B run. Only global rank 0
    makes one (the only rank that logs): tasks that srun starts together would each write their own, and the
    last writer's id, not rank 0's, would be the one a requeued job resumes."""
    path = output_dir / "wandb_run_id.txt"
    if path.is_file():
        return path.read_text().strip()
    if launch_rank() != 0:
        return None
    run_id = uuid.uuid4().hex[:12]
    atomic_save(lambda tmp: Path(tmp).write_text(run_id + "\n"), path)
    return run_id


# ---------------------------------------------------------------- the run

def train(cfg: DictConfig) -> dict[str, float]:
    check_training_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    net_config = OmegaConf.to_container(cfg.model.net, resolve=True)
    name = model_choice()
    runs_dir = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
    resume = resolve_resume(cfg.get("ckpt_path"), output_dir, runs_dir)
    check_run_folder(output_dir, resume)
    if resume:
        check_resume_checkpoint(resume, net_config, name)
        log.info("resuming from %s", resume)
    remove_stale_temporaries(output_dir / "checkpoints")

    datamodule = hydra.utils.instantiate(cfg.data.module)
    model = hydra.utils.instantiate(cfg.model)
    model.network_record = network_record(net_config, name)
    if model.hparams.total_steps is None and cfg.trainer.get("max_steps", -1) > 0:
        model.hparams.total_steps = int(cfg.trainer.max_steps)
    if cfg.get("init_from"):
        load_network_weights(model.net, cfg.init_from)
        log.info("initialised the network from %s", cfg.init_from)
    warn_frozen_random_encoder(net_config.get("encoder", {}), cfg.get("init_from"), resume)

    validates = datamodule.validates and not cfg.trainer.get("fast_dev_run")
    check_optimized_metric(cfg.get("optimized_metric"), sweeper_choice(), validates)
    if not validates:
        checkpoint_without_validation(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"))
    check_monitors(callbacks, validates)
    if cfg.get("logger") and cfg.logger.get("wandb") is not None:
        with open_dict(cfg):
            cfg.logger.wandb.id = cfg.logger.wandb.get("id") or wandb_run_id(output_dir)
            cfg.logger.wandb.resume = "allow"
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # nothing to report learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    trainer_overrides = {} if validates else {"limit_val_batches": 0}
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                 **trainer_overrides)
    check_multirun_launch(trainer.strategy, hydra_mode())
    if validates:
        if trainer.is_global_zero:
            datamodule.prepare_data()  # Lightning runs it again (it is idempotent); the check needs the data
        check_validation(datamodule, cfg.data.get("val_protocol") or cfg.data.get("protocol", "davis"))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    n_params = sum(p.numel() for p in model.net.parameters())
    log.info("network: %s parameters; %s", f"{n_params:,}", describe(net_config))
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    finally:
        for lg in loggers:  # the next job of a multirun in this process starts its own W&B run
            if type(lg).__name__ == "WandbLogger" and trainer.is_global_zero and lg._experiment is not None:
                lg.experiment.finish()

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    summary = run_summary(trainer, model, cfg)
    metrics.update({k: v for k, v in summary.items() if isinstance(v, float)})
    if trainer.is_global_zero:
        text = json.dumps(summary, indent=2)
        atomic_save(lambda tmp: Path(tmp).write_text(text + "\n"), output_dir / "job_summary.json")
    metrics["_checkpoint"] = summary.get("checkpoint")
    return metrics


def run_summary(trainer: L.Trainer, model, cfg: DictConfig) -> dict:
    """One row of a sweep's table: what the job trained, its best val J&F, speed and checkpoints."""
    best, best_path, last = None, None, None
    for cb in trainer.callbacks:
        if not isinstance(cb, L.pytorch.callbacks.ModelCheckpoint):
            continue
        if str(cb.monitor or "").startswith("val/") and cb.best_model_score is not None:
            best, best_path = float(cb.best_model_score), cb.best_model_path
        elif cb.best_model_path and Path(cb.best_model_path).name == "last.ckpt":
            last = cb.best_model_path
        else:
            best_path = best_path or cb.best_model_path or None
            last = cb.last_model_path or last
    history = getattr(model, "val_history", [])
    fps = trainer.callback_metrics.get("val/fps")
    hc = hydra_config()
    overrides = list(hc.overrides.task) if hc is not None else []
    return {
        "overrides": overrides, "output_dir": str(cfg.paths.output_dir), "global_step": int(trainer.global_step),
        "val/J&F": best if best is not None else (max(v for _, v in history) if history else None),
        "val/fps": float(fps) if fps is not None else None,
        "checkpoint": best_path or last, "last_checkpoint": last,
    }
