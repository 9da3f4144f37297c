"""Export of the per-frame step (and the reference-frame step) with the memory state as explicit tensors.

    python -m mavos.export ckpt_path=last.ckpt format=onnx size=481x849 [out=export/] [model=NAME]

``export_steps(net, size, out_dir, format)`` writes ``reference``, ``step`` and ``step_write`` graphs
(``.onnx`` files, or ``.pt2`` torch.export programs) and ``mavos_export.json``, which names every input and
output and the memory schedule. Only fixed-size memories (MCA) export; see ``mavos.export.steps``. Every file is
written beside its destination and renamed, and the manifest last: a folder holds a manifest only when the export
it describes is complete (an export that stops half-way first removes the folder's earlier manifest).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mavos.data.io import atomic_save, remove_stale_temporaries
from mavos.export.steps import PropagationStep, ReferenceStep, inference_network, state_names
from mavos.model.vos import VOSNetwork

FORMATS = ("onnx", "torch_export")
MANIFEST = "mavos_export.json"
MIN_OPSET = 18  # the oldest opset torch's dynamo exporter writes (asked for less, it would write 18 anyway)


class ExportError(ValueError):
    """A request that cannot be exported; the message says why and what would work."""


def check_exportable(net: VOSNetwork, size: tuple[int, int]) -> None:
    """Refuse growing memories and sizes the network cannot take, naming the nearest valid sizes."""
    if net.memory.fixed_slots is None:
        raise ExportError(
            f"cannot export a {type(net.memory).__name__} model: its long-term memory grows with the video (one "
            f"slot per memory frame), so its per-frame step has no fixed shape. Export an MCA model (mavos_*), "
            f"whose memory stays two slots.")
    if net.memory.fixed_slots != 2:
        raise ExportError(
            f"cannot export a {type(net.memory).__name__} model: its memory fills up to {net.memory.fixed_slots} "
            f"slots over its first memory frames, one more graph shape each, and the export writes the two-slot "
            f"step of MCA only. Export an MCA model (mavos_*).")
    multiple, offset = net.size_multiple
    bad = [side for side in size if side < multiple + offset or (side - offset) % multiple]
    if bad:
        def near(side: int) -> list[int]:
            if side not in bad:  # already valid: itself
                return [side]
            k = max(1, (side - offset) // multiple)
            return sorted({k * multiple + offset, (k + 1) * multiple + offset})
        h_options, w_options = near(size[0]), near(size[1])
        options = ", ".join(f"{h}x{w}" for h in h_options for w in w_options)
        rule = f"{multiple}k+{offset}" if offset else f"{multiple}k"
        raise ExportError(f"size={size[0]}x{size[1]}: both sides must be {rule} for this model; nearest valid "
                          f"sizes: {options}")


def example_inputs(net: VOSNetwork, size: tuple[int, int], batch: int = 1):
    """Tensors of the right shapes for each graph (what the tracer runs on), and the logits' (h, w)."""
    h, w = size
    reference = ReferenceStep(net, size)
    frame = torch.rand(batch, 3, h, w)
    mask = torch.zeros(batch, h, w, dtype=torch.long)
    mask[:, h // 4: h // 2, w // 4: w // 2] = 1
    num_objects = torch.ones(batch, dtype=torch.long)
    with torch.no_grad():
        ref_out = reference(frame, mask, num_objects)
    state = ref_out[1:]
    return (frame, mask, num_objects), (frame, num_objects, *state), tuple(ref_out[0].shape[-2:])


def export_steps(net: VOSNetwork, size: tuple[int, int], out_dir: str | Path, format: str = "onnx",
                 long_term_gap: int | None = None, opset: int = MIN_OPSET) -> dict:
    """Write the three graphs and the manifest to ``out_dir``; returns the manifest. ``net`` itself is left as
    it was (the export works on a folded CPU copy of it)."""
    if format not in FORMATS:
        raise ExportError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
    if format == "onnx" and opset < MIN_OPSET:
        raise ExportError(f"opset={opset}: the ONNX export (torch's dynamo exporter) writes opset {MIN_OPSET} or "
                          f"later; give opset={MIN_OPSET} or more")
    if format == "onnx":
        import importlib.util

        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(f"format=onnx needs the {' and '.join(missing)} package(s): pip install "
                              f"'mavos[export]' (or format=torch_export, which needs nothing more)")
    size = (int(size[0]), int(size[1]))
    check_exportable(net, size)
    net = inference_network(net)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # its graphs are about to be replaced
    layers = len(net.propagator.layers)
    long_names, short_names = state_names(layers, short_term=False), state_names(layers, long_term=False)
    graphs = {
        "reference": (ReferenceStep(net, size), ["frame", "mask", "num_objects"],
                      ["logits", *long_names, *short_names, "memory_fused"]),
        "step": (PropagationStep(net, size, write=False),
                 ["frame", "num_objects", *long_names, *short_names, "memory_fused"],
                 ["logits", "mask", *[f"next_{n}" for n in short_names]]),
        "step_write": (PropagationStep(net, size, write=True),
                       ["frame", "num_objects", *long_names, *short_names, "memory_fused"],
                       ["logits", "mask", *[f"next_{n}" for n in short_names], *[f"next_{n}" for n in long_names],
                        "next_memory_fused"]),
    }
    ref_args, step_args, (logits_h, logits_w) = example_inputs(net, size)
    files = {}
    for name, (module, inputs, outputs) in graphs.items():
        module.eval()
        args = ref_args if name == "reference" else step_args
        suffix = ".onnx" if format == "onnx" else ".pt2"
        path = out_dir / f"{name}{suffix}"
        with torch.no_grad():
            if format == "onnx":
                atomic_save(lambda tmp: torch.onnx.export(
                    module, args, tmp, input_names=inputs, output_names=outputs, opset_version=opset, dynamo=True,
                    external_data=False, verbose=False), path)
            else:
                program = torch.export.export(module, args)
                atomic_save(lambda tmp: torch.export.save(program, tmp), path)
        files[name] = {"file": path.name, "inputs": inputs, "outputs": outputs}
    gap = int(net.memory.test_gap if long_term_gap is None else long_term_gap)
    manifest = {
        "format": format, "size": list(size), "max_objects": net.max_objects, "num_layers": layers,
        "long_term_gap": gap, "graphs": files,
        "schedule": (f"frame 0: reference(frame, mask, num_objects) gives the state. Frame t >= 1: step_write when "
                     f"t % {gap} == 0, else step; feed each graph's next_* outputs back as the state's inputs "
                     f"(step returns only the short-term state: keep the long-term one)."),
        "frame": "float32 (1, 3, H, W) RGB in [0, 1] at exactly `size` (one video per call: batch 1)",
        "mask": "int64 (1, H, W) object ids, 0 = background; output mask = argmax of the logits upsampled",
        "logits": f"float32 (1, 1 + max_objects, {logits_h}, {logits_w}) (stride 4); ids above num_objects hold "
                  f"-1e10",
    }
    atomic_save(lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)), out_dir / MANIFEST)
    return manifest
