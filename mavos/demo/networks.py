"""Which network a run uses: a checkpoint (or seeded random weights) with the memory policy the user picks.

A checkpoint stores its network, memory included (``load_network``). To run it with the *other* memory (the
page's memory choice, or "compare"), the same network is rebuilt with that memory policy and given every
weight the checkpoint has outside the memory: same encoder, propagation and decoder, two memories. The MCA
blocks exist only in an MCA network, so a bank run of a MAVOS checkpoint leaves them out, and an MCA run of a
DeAOT checkpoint has untrained (seeded random) MCA blocks; ``memory_note`` says so in the page.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from mavos.checkpoints.loading import (load_network, load_state, read_checkpoint, stored_network,
                                       without_pretrained_file)
from mavos.model.memory import BankMemory, FIFOMemory, MCAMemory
from mavos.registry import ConfigError, build_network, network_config

RANDOM = "random weights (mavos_mbv2, seed 0)"
RANDOM_MODEL = "mavos_mbv2"
POLICIES = ("mca", "bank")
RANDOM_WARNING = ("**Random weights**: no checkpoint is selected, so the masks are meaningless (time and memory are "
                  "still real). Pick one from `weights/` or `logs/train/runs/*/checkpoints/`, train one with "
                  "`make run`, or convert the authors' weights (README).")


def checkpoint_choices(root: str | Path) -> list[str]:
    """Checkpoints under ``root``: ``weights/*.ckpt``, then training runs' checkpoints, newest run first."""
    root = Path(root)
    weights = sorted((root / "weights").glob("*.ckpt"))
    runs = []
    for run in sorted((root / "logs" / "train" / "runs").glob("*"), key=lambda p: p.name, reverse=True):
        runs += sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", p.name))
    return [_relative(p, root) for p in weights + runs]


def default_checkpoint(root: str | Path, explicit: str | None = None) -> str:
    """``explicit``, else the quick start's latest ``last.ckpt`` (newest file), else RANDOM."""
    if explicit:
        return explicit
    root = Path(root)
    lasts = sorted((root / "logs" / "train" / "runs").glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return _relative(lasts[-1], root) if lasts else RANDOM


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def policy_of(net) -> str:
    memory = net.memory
    return ("mca" if isinstance(memory, MCAMemory) else "bank" if isinstance(memory, BankMemory)
            else "fifo" if isinstance(memory, FIFOMemory) else type(memory).__name__)


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def with_memory(net, config: dict, model: str | None, policy: str, path: str = "checkpoint"):
    """``net`` rebuilt with memory ``policy``: its weights outside the memory, the policy's own (seeded) inside."""
    config = without_pretrained_file(config)
    config["memory"] = network_config(model or RANDOM_MODEL, [f"memory={policy}"])["memory"]
    variant = _seeded(lambda: build_network(config))
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("memory.")}
    state.update({k: v for k, v in variant.state_dict().items() if k.startswith("memory.")})
    load_state(variant, state, path)
    return variant.eval()


def memory_note(stored: str, policy: str) -> str:
    """What a run with memory ``policy`` of a network trained with memory ``stored`` is, in a sentence."""
    if stored == policy:
        return f"`{policy}`: the network as trained."
    if policy == "bank":
        return (f"`bank`: the same encoder, propagation and decoder weights with DeAOT's growing memory instead of "
                f"`{stored}` (the MCA blocks unused): not a trained DeAOT's masks; its time and memory are the point.")
    return (f"`{policy}`: the same weights with MAVOS's two-slot memory, whose MCA blocks this `{stored}` network "
            f"never trained (seeded random): its masks mean little; its time and memory are the point.")


class NetworkCache:
    """Networks by (checkpoint, memory policy), kept for the next run (a few; loading takes seconds).

    The networks are stateless at inference (each ``InferenceSession`` holds its own memory), so concurrent
    runs share them.
    """

    def __init__(self, root: str | Path, device: torch.device, size: int = 4, started_with: str | None = None) -> None:
        self.root, self.device, self.size = Path(root), device, size
        self.started_with = None if started_with in (None, RANDOM) else \
            Path(os.path.abspath(self._within_root(started_with)))
        self._nets: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def _within_root(self, checkpoint: str) -> Path:
        path = Path(checkpoint)
        return path if path.is_absolute() else self.root / path

    def _path(self, checkpoint: str) -> Path:
        """The file of a checkpoint the page names: under ``weights/`` or ``logs/`` of the root (what the page
        lists), or the one the demo was started with. Anything else is refused: the name comes from the browser,
        and a checkpoint is a pickle, which runs code as it loads."""
        path = self._within_root(checkpoint)
        where = Path(os.path.abspath(path))  # '..' folded, symbolic links kept: weights/x.ckpt may link elsewhere
        places = [Path(os.path.abspath(self.root / folder)) for folder in ("weights", "logs")]
        if where != self.started_with and not any(where.is_relative_to(place) for place in places):
            raise ConfigError(f"{checkpoint}: this demo loads checkpoints from weights/ and logs/ under {self.root} "
                              f"(or the ckpt_path it was started with), not from elsewhere: a checkpoint is a pickle, "
                              f"and loading one runs its code")
        return path

    def _key(self, checkpoint: str, policy: str) -> tuple:
        if checkpoint == RANDOM:
            return (RANDOM, policy)
        path = self._path(checkpoint)
        return (str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0, policy)

    def get(self, checkpoint: str, policy: str | None = None):
        """(network on the device, memory note). policy None: the checkpoint's own memory.
        Raises CheckpointError (bad file) or ConfigError with a readable message."""
        with self._lock:
            key = self._key(checkpoint, policy or "")
            if key in self._nets:
                self._nets.move_to_end(key)
                return self._nets[key]
            entry = self._build(checkpoint, policy)
            self._nets[key] = entry
            while len(self._nets) > self.size:
                self._nets.popitem(last=False)
            return entry

    def _build(self, checkpoint: str, policy: str | None):
        if checkpoint == RANDOM:
            net = _seeded(lambda: build_network(RANDOM_MODEL))
            config, model, path = network_config(RANDOM_MODEL), RANDOM_MODEL, RANDOM
        else:
            path = self._path(checkpoint)
            net = load_network(path)
            config = model = None
        stored = policy_of(net)
        if policy and policy != stored:
            if config is None:
                record = stored_network(read_checkpoint(path))
                config, model = record["config"], record.get("model")
            net = with_memory(net, config, model, policy, str(path))
        return net.to(self.device).eval(), memory_note(stored, policy or stored)
