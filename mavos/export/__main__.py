"""Command line: export a checkpoint's per-frame step with its memory state as explicit inputs and outputs.

    python -m mavos.export ckpt_path=last.ckpt format=onnx size=481x849 [out=export] [model=NAME] [gap=10]

format: onnx (reference.onnx, step.onnx, step_write.onnx) or torch_export (.pt2 programs, torch.export.load);
size: the exact input size (16k+1 per side; 16k for Swin-B); model: only for checkpoints that do not store
their network config. Writes mavos_export.json next to the graphs (inputs, outputs, memory schedule).
"""
from __future__ import annotations

import sys

from mavos.checkpoints.__main__ import parse_options
from mavos.checkpoints.loading import CheckpointError, load_network
from mavos.export import FORMATS, ExportError, export_steps

OPTIONS = {"ckpt_path", "format", "size", "out", "model", "gap", "opset"}


def usage() -> str:
    return ("usage: python -m mavos.export ckpt_path=CKPT format=onnx|torch_export size=HxW [out=DIR] "
            "[model=NAME] [gap=N] [opset=18]")


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ExportError(f"size={text!r}: expected HxW, e.g. 481x849") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_options(argv)
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
        net = load_network(options["ckpt_path"], options.get("model"))
        manifest = export_steps(net, size, out, fmt, long_term_gap=int(options["gap"]) if "gap" in options else None,
                                opset=int(options.get("opset", 18)))
    except (CheckpointError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = ", ".join(g["file"] for g in manifest["graphs"].values())
    print(f"{options['ckpt_path']} -> {out}/: {names}, {out}/mavos_export.json "
          f"({size[0]}x{size[1]}, long-term gap {manifest['long_term_gap']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
