"""The one registry of named networks: the Hydra model configs under ``conf/model``.

Everything that needs "the network called mavos_r50" outside a Hydra run (the checkpoint converter,
``VideoPredictor``, scripts, the demo, tests) composes ``conf/network.yaml`` with ``model=<name>`` here,
instead of keeping a table of its own; train.py and evaluate.py get the same ``model.net`` node from
their composed config. A network config is a plain dict with ``_target_`` keys, stored inside every
checkpoint we write, so a checkpoint rebuilds its network without being told the model's name.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mavos.errors import MavosError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


class ConfigError(MavosError, ValueError):
    """A config key or value that cannot work; the message names the key (and file where there is one)."""


def model_names() -> list[str]:
    """Names of the model configs (``conf/model/*.yaml``)."""
    return sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


def _compose(config_name: str, overrides: Sequence[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app over the same conf/
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def network_config(model: str = "mavos_mbv2", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved ``model.net`` config of a named model (+ Hydra overrides such as ``memory=bank``)."""
    from omegaconf import OmegaConf

    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"{CONFIG_DIR}: the mavos configs are missing (install from a source checkout: "
                          f"pip install -e .)")
    names = model_names()
    if model not in names:
        raise ConfigError(f"model={model!r}: unknown model; choose from {', '.join(names)} "
                          f"({CONFIG_DIR / 'model'})")
    cfg = _compose("network", [f"model={model}", *overrides])
    return OmegaConf.to_container(cfg.model.net, resolve=True)


def build_network(config: str | Mapping[str, Any] = "mavos_mbv2", overrides: Sequence[str] = ()):
    """A ``VOSNetwork`` from a model name (composed through the configs) or from a network config dict."""
    import hydra

    if isinstance(config, str):
        config = network_config(config, overrides)
    elif overrides:
        raise ConfigError("overrides apply to a model name, not to a ready network config")
    try:
        return hydra.utils.instantiate(dict(config), _convert_="all")
    except Exception as e:  # an unknown _target_ (backbone, memory) or a bad argument
        raise ConfigError(f"cannot build the network from its config ({describe(config)}): {e}") from e


def describe(config: Mapping[str, Any]) -> str:
    """A one-line summary of a network config: encoder, memory policy and its main settings."""
    def short(node) -> str:
        target = str((node or {}).get("_target_", "?"))
        return target.rsplit(".", 1)[-1]

    memory = config.get("memory") or {}
    extra = [f"{k}={memory[k]}" for k in ("value_layout", "test_gap") if k in memory]
    return (f"{short(config.get('encoder'))} + {short(memory)}" + (f" ({', '.join(extra)})" if extra else "")
            + f", max_objects={config.get('max_objects')}")
