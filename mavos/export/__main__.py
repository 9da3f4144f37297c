"""Command line: export a checkpoint's per-frame step with its memory state as explicit inputs and outputs.

    python -m mavos.export ckpt_path=last.ckpt format=onnx size=481x849 [out=export] [model=NAME] [gap=10]

format: onnx (reference.onnx, step.onnx, step_write.onnx) or torch_export (.pt2 programs, torch.export.load);
size: the exact input size (16k+1 per side; 16k for Swin-B); model: only for checkpoints that do not store
their network config. Writes mavos_export.json next to the graphs (inputs, outputs, memory schedule).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mavos.checkpoints.__main__ import parse_options
from mavos.checkpoints.loading import CheckpointError, load_network
from mavos.errors import print_error
from mavos.export import FORMATS, MIN_OPSET, ExportError, export_steps

OPTIONS = {"ckpt_path", "format", "size", "out", "model", "gap", "opset"}


PROGRAM = "python -m mavos.export"  # how errors name this command, as evaluate.py and train.py name theirs


def usage() -> str:
    return ("usage: python -m mavos.export ckpt_path=CKPT format=onnx|torch_export size=HxW [out=DIR] "
            "[model=NAME] [gap=N] [opset=18]")


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ExportError(f"size={text!r}: expected HxW, e.g. 481x849") from None
    return h, w


def parse_count(options: dict, key: str, default: int | None) -> int | None:
    """A whole number >= 1 from ``key=N``, or ``default`` when it is not given."""
    if key not in options:
        return default
    try:
        value = int(options[key])
    except ValueError:
        raise ExportError(f"{key}={options[key]!r}: expected a whole number") from None
    if value < 1:
        raise ExportError(f"{key}={value}: must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(f"{usage()}\n\n{__doc__.strip()}")
        return 0
    try:
        options = parse_options(argv)
    except ValueError as e:
        print(f"{e}\n{usage()}", file=sys.stderr)
        return 2
    unknown = set(options) - OPTIONS
    missing = {"ckpt_path", "size"} - set(options)
    if unknown or missing:
        what = f"unknown options {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"
        print(f"{what}\n{usage()}", file=sys.stderr)
        return 2
    fmt = options.get("format", "onnx")
    if fmt not in FORMATS:
        print(f"format={fmt!r}: choose one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    out = options.get("out", "export")
    try:
        size = parse_size(options["size"])
        gap, opset = parse_count(options, "gap", None), parse_count(options, "opset", MIN_OPSET)
        if Path(out).exists() and not Path(out).is_dir():
            raise ExportError(f"out={out}: a file is there; the export writes a folder")
        net = load_network(options["ckpt_path"], options.get("model"))
        manifest = export_steps(net, size, out, fmt, long_term_gap=gap, opset=opset)
    except (CheckpointError, ExportError) as e:
        print_error(PROGRAM, e)
        return 1
    except OSError as e:  # the output folder cannot be written (permissions, disk full): said, not a traceback
        print_error(PROGRAM, f"out={out}: {e}")
        return 1
    names = ", ".join(g["file"] for g in manifest["graphs"].values())
    print(f"{options['ckpt_path']} -> {out}/: {names}, {out}/mavos_export.json "
          f"({size[0]}x{size[1]}, long-term gap {manifest['long_term_gap']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
