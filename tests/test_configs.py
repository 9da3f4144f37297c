"""Every config composes, and everything it names instantiates (without touching data on disk)."""
from __future__ import annotations

import itertools
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


REQUIRED = {"video": ["data.video=v.mp4", "data.mask=m.png"], "frames": ["data.frames=f", "data.masks=m"]}


SCRATCH = {"dir": None}


@pytest.fixture(autouse=True)
def scratch_paths(tmp_path):
    """Every composed run points its paths into the test's own temporary folder (nothing outside the clone)."""
    SCRATCH["dir"] = tmp_path
    yield
    SCRATCH["dir"] = None


def path_overrides() -> list[str]:
    root = SCRATCH["dir"]
    return [f"paths.root_dir={root}", f"paths.output_dir={root / 'out'}", f"paths.work_dir={root}"]


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*path_overrides(), *overrides])


@pytest.mark.parametrize("model,memory,data", list(itertools.product(options("model"), options("memory"), options("data"))))
def test_model_memory_data_combinations_compose(model, memory, data):
    cfg = compose_train([f"model={model}", f"memory={memory}", f"data={data}", *REQUIRED.get(data, [])])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["net"]["memory"]["_target_"].endswith({"mca": "MCAMemory", "bank": "BankMemory",
                                                                     "fifo": "FIFOMemory"}[memory])
    assert resolved["data"]["name"]
    assert resolved["data"]["protocol"] in ("davis", "ltv", "lvos", "none")


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks", "experiment", "debug", "hparams_search", "backbone"])
def test_every_option_of_other_groups_composes(group):
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group == "experiment" and option == "pre_ytb_dav":
            overrides.append("trainer.devices=1")
        cfg = compose_train(overrides)
        OmegaConf.to_container(cfg, resolve=True)


def test_model_picks_its_backbone_and_memory():
    cfg = compose_train(["model=deaot_r50"])
    assert cfg.model.net.encoder._target_.endswith("ResNet50Encoder")
    assert cfg.model.net.memory._target_.endswith("BankMemory")
    assert cfg.model.net.memory.test_gap == 5
    cfg = compose_train(["model=mavos_mbv2"])
    assert cfg.model.net.memory.test_gap == 10 and cfg.model.net.memory.value_layout == "released"


@pytest.mark.parametrize("model,params", [("mavos_mbv2", 34_429_833), ("deaot_mbv2", 13_167_342),
                                          ("mavos_r50", 41_077_385)])
def test_model_configs_instantiate_the_official_sizes(model, params):
    # a real-data stage: frozen BatchNorm (the embedded benchmark trains BN from scratch, adding its affine params)
    cfg = compose_train([f"model={model}", "data=davis2017"])
    module = hydra.utils.instantiate(cfg.model)
    assert sum(p.numel() for p in module.net.parameters()) == params


@pytest.mark.parametrize("model", ["mavos_mbv2", "mavos_r50", "mavos_swinb"])
def test_static_pretraining_follows_the_released_pre_stage(model):
    """The authors' PRE configs: TRAIN_LR 4e-4, TRAIN_LR_MIN 2e-5, TRAIN_WEIGHT_DECAY 0.03,
    TRAIN_SEQ_TRAINING_START_RATIO 1.0, TRAIN_AUX_LOSS_RATIO 0.1, whatever the backbone's main-stage values."""
    from mavos.training.schedule import aux_weight

    m = compose_train([f"model={model}", "data=static"]).model
    assert (m.lr, m.min_lr, m.weight_decay, m.sequential_start, m.aux_loss_ratio) == (4e-4, 2e-5, 0.03, 1.0, 0.1)
    assert compose_train([f"model={model}", "data=davis2017"]).model.aux_loss_ratio == 1.0
    # weight 1 falling to 0 at 10% of 100k steps: 0.5 at step 5,000, 0 from 10,000 on
    assert [aux_weight(s, 100_000, 1.0, 0.1) for s in (0, 5_000, 10_000, 50_000)] == [1.0, 0.5, 0.0, 0.0]
    assert aux_weight(25_000, 100_000) == 0.75   # the main stage: over the whole run


def test_embedded_benchmark_trains_batchnorm_from_scratch():
    cfg = compose_train([])
    assert cfg.model.net.encoder.frozen_bn is False and cfg.model.net.encoder.freeze_at == 0
    net = hydra.utils.instantiate(cfg.model).net
    assert any(isinstance(m, __import__("torch").nn.BatchNorm2d) for m in net.encoder.modules())


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_instantiate(data):
    cfg = compose_train([f"data={data}", *REQUIRED.get(data, [])])
    dm = hydra.utils.instantiate(cfg.data.module)
    assert hasattr(dm, "val_videos")


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_instantiate(trainer):
    if trainer in ("gpu", "ddp"):
        pytest.skip("needs a GPU")
    cfg = compose_train([f"trainer={trainer}"])
    t = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert t.max_steps == cfg.trainer.max_steps


def test_eval_config_composes_with_every_data():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for data in options("data"):
            cfg = compose("eval", overrides=[f"data={data}", *path_overrides(), *REQUIRED.get(data, [])])
            OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_callback_configs_instantiate(callbacks):
    from mavos.training.run import instantiate_group

    cfg = compose_train([f"callbacks={callbacks}"])
    made = instantiate_group(cfg.get("callbacks"))
    assert len(made) == len([c for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c])
    if callbacks == "ema":
        assert any(type(c).__name__ == "RecipeEMA" for c in made)


def test_early_stopping_beside_the_recipe_ema_keeps_both():
    """The README's `callbacks=[ema,early_stopping]`: the recipe's EMA, early stopping and the checkpoints
    together (``callbacks=early_stopping`` alone replaces the experiment's ema choice)."""
    from mavos.training.run import instantiate_group

    made = {type(c).__name__ for c in instantiate_group(compose_train(["experiment=pre_ytb_dav",
                                                                        "callbacks=[ema,early_stopping]"]).callbacks)}
    assert {"RecipeEMA", "EarlyStopping", "ModelCheckpoint", "FinalCheckpoint"} <= made
    alone = {type(c).__name__ for c in instantiate_group(compose_train(["experiment=pre_ytb_dav",
                                                                         "callbacks=early_stopping"]).callbacks)}
    assert "RecipeEMA" not in alone and "EarlyStopping" in alone
