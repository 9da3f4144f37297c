"""Command line: turn an official MAVOS / DeAOT checkpoint into one ``evaluate.py`` can load.

    python -m mavos.checkpoints convert IN.pth OUT.ckpt model=mavos_r50

The output is a Lightning-style checkpoint: ``state_dict`` holds our network's tensors under ``net.``
(as ``VOSLitModule`` stores them), ``hyper_parameters`` / ``mavos`` name the model it belongs to.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mavos.checkpoints.convert import convert_official_state_dict, fit_to_model
from mavos.checkpoints.loading import NETWORK_KEY, CheckpointError, network_record
from mavos.data.io import atomic_save
from mavos.errors import MavosError, print_error
from mavos.registry import ConfigError, model_names


PROGRAM = "python -m mavos.checkpoints convert"  # how errors name this command


def usage() -> str:
    return ("usage: python -m mavos.checkpoints convert IN.pth OUT.ckpt model=NAME [unsafe_load=true]\n"
            f"  NAME: one of {', '.join(model_names())} (the model configs, conf/model/)")


@dataclass
class ConversionReport:
    model: str
    tensors: int
    parameters: int
    unmapped: list[str]


def read_official(path: Path, unsafe_load: bool = False) -> dict:
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download?)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not unsafe_load)
    except Exception as e:
        why = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        pickled = "weights_only" in str(e) or "Unsupported global" in str(e)
        hint = " (if the file is trusted and holds non-tensor objects, add unsafe_load=true)" \
            if pickled and not unsafe_load else ""
        raise CheckpointError(f"{path}: cannot read checkpoint: {why}{hint}") from e
    if isinstance(raw, dict) and (NETWORK_KEY in raw or any(
            isinstance(k, str) and k.startswith("net.") for k in (raw.get("state_dict") or {}))):
        raise CheckpointError(f"{path}: already a mavos checkpoint (converted, or written by train.py): "
                              f"evaluate.py, the demo and load_network take it as it is")
    return raw


def convert_checkpoint_file(src: str | Path, dst: str | Path, model: str,
                            unsafe_load: bool = False) -> ConversionReport:
    """Convert ``src`` (official) to ``dst`` (ours); refuses, naming ``src``, when it does not fit ``model``."""
    from lightning import __version__ as lightning_version

    from mavos.model.memory import MCAMemory
    from mavos.registry import build_network, network_config

    src, dst = Path(src), Path(dst)
    if dst.is_dir():
        raise CheckpointError(f"{dst}: is a folder; give the converted checkpoint's file name (e.g. "
                              f"{dst / (src.stem + '_mavos.ckpt')})")
    try:
        config = network_config(model)
    except ConfigError as e:
        raise CheckpointError(f"{src}: {e}") from e
    net = build_network(config)
    raw = read_official(src, unsafe_load)
    try:
        converted, unmapped = convert_official_state_dict(raw, with_mca=isinstance(net.memory, MCAMemory))
    except ValueError as e:
        raise CheckpointError(f"{src}: {e}") from e
    try:
        fitted, missing, unexpected = fit_to_model(converted, net.state_dict(), str(src))
    except ValueError as e:
        raise CheckpointError(str(e) + f". Is {src} really a {model} checkpoint?") from e
    unmapped = unmapped + unexpected
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(f"{src}: {len(missing)} tensors of {model} are not in the checkpoint: {shown}. "
                              f"Is it really a {model} checkpoint?")
    net.load_state_dict(fitted, strict=True)  # final proof that evaluate.py's strict load will succeed
    ckpt = {
        "state_dict": {"net." + k: v for k, v in fitted.items()},
        "hyper_parameters": {"model": model},
        NETWORK_KEY: network_record(config, model),
        "mavos_conversion": {"source": str(src), "converted_from": "official", "unmapped": unmapped},
        "pytorch-lightning_version": lightning_version,
        "epoch": 0,
        "global_step": 0,
    }
    atomic_save(lambda tmp: torch.save(ckpt, tmp), dst)
    return ConversionReport(model, len(fitted), sum(p.numel() for p in net.parameters()), unmapped)


def parse_options(items: list[str]) -> dict[str, str]:
    """``key=value`` arguments as a dict; ValueError naming the first argument that is not one."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {item!r}")
        options[key.lstrip("-")] = value
    return options


HELP = """Convert a checkpoint of the authors' code (Amshaker/MAVOS, or aot-benchmark for DeAOT) into one that
evaluate.py, train.py init_from=, VideoPredictor and the demo load. Every tensor is mapped by name and checked
against the network of the model config (conf/model/NAME.yaml); the output stores that network's config, so
it loads without being told the model again. Keys that map nowhere are listed; a tensor of the wrong shape, or
a checkpoint of another model, is refused naming the file.

Example:
  python -m mavos.checkpoints convert MAVOS_mbv2.pth weights/mavos_mbv2.ckpt model=mavos_mbv2
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "help"):
        print(HELP + "\n" + usage())
        return 0
    if len(argv) < 3 or argv[0] != "convert":
        print(usage(), file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    try:
        options = parse_options(argv[3:])
    except ValueError as e:
        print(f"{e}\n{usage()}", file=sys.stderr)
        return 2
    unknown = set(options) - {"model", "unsafe_load"}
    if "model" not in options or unknown:
        print(f"{'unknown options ' + str(sorted(unknown)) if unknown else 'model= is required'}\n{usage()}",
              file=sys.stderr)
        return 2
    unsafe = options.get("unsafe_load", "false").lower() in ("1", "true", "yes")
    try:
        report = convert_checkpoint_file(src, dst, options["model"], unsafe_load=unsafe)
    except MavosError as e:
        print_error(PROGRAM, e)
        return 1
    print(f"{src} -> {dst}: {report.model}, {report.tensors} tensors, {report.parameters:,} parameters")
    print("missing keys: none")
    if report.unmapped:
        print(f"unmapped official keys ({len(report.unmapped)}, not used):")
        for key in report.unmapped:
            print(f"  {key}")
    else:
        print("unmapped official keys: none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
