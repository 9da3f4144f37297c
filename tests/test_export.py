"""python -m mavos.export: the exported per-frame step, run in onnxruntime over 30 frames with memory writes,
matches PyTorch; growing memories and invalid sizes are refused with reasons."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mavos.checkpoints.loading import NETWORK_KEY, network_record
from mavos.export import ExportError, check_exportable
from mavos.export.__main__ import main as export_main
from mavos.inference.tracker import ObjectTracker, one_hot_mask
from mavos.registry import build_network, network_config
from tests.golden_scenario import seeded_weights

SIZE, FRAMES, GAP = 65, 30, 3


@pytest.fixture(scope="module")
def net():
    """Seeded weights, with the decoder's output biases raised for objects 1 and 2 (by about the gap between
    their mean logits and the background's): random weights alone predict background everywhere after frame 0,
    and every memory write would then store an empty mask. With them, every frame predicts both objects."""
    torch.manual_seed(0)
    net = seeded_weights(build_network("mavos_mbv2"))
    with torch.no_grad():
        net.decoder.conv_out.bias[1:3] += torch.tensor([4.0, 2.5])
    return net


@pytest.fixture(scope="module")
def checkpoint(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mavos_mbv2.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                NETWORK_KEY: network_record(network_config("mavos_mbv2"), "mavos_mbv2")}, path)
    return path


def video():
    rng = np.random.default_rng(0)
    frames = rng.random((FRAMES, 1, 3, SIZE, SIZE), dtype=np.float32)
    mask = np.zeros((1, SIZE, SIZE), dtype=np.int64)
    mask[:, 10:30, 10:40], mask[:, 40:60, 20:50] = 1, 2
    return frames, mask


def pytorch_reference(net, frames, mask, memorised=None):
    """The same video through ObjectTracker: each frame memorised with its own upsampled argmax, or with
    ``memorised[t]`` where given (the exported step's own prediction, so that a pixel whose two best logits tie
    to within float rounding cannot send the two memories apart). Also each frame's margin: per pixel, the best
    upsampled logit of the objects present minus the second best."""
    tracker = ObjectTracker(net, [2], long_term_gap=GAP)
    logits, masks, margins = [], [torch.from_numpy(mask)], [None]
    with torch.no_grad():
        logits.append(tracker.reference(net.encode(torch.from_numpy(frames[0])), one_hot_mask(masks[0], 10)))
        for t in range(1, len(frames)):
            out = tracker.propagate(net.encode(torch.from_numpy(frames[t])))
            up = F.interpolate(out, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
            label = up.argmax(1)
            top2 = up[:, :3].topk(2, dim=1).values
            tracker.memorize(one_hot_mask(label if memorised is None else torch.from_numpy(memorised[t]), 10))
            logits.append(out)
            masks.append(label)
            margins.append((top2[:, 0] - top2[:, 1]).numpy())
    assert tracker.memory.num_slots == 2
    return [x.numpy() for x in logits], [m.numpy() for m in masks], margins


def test_onnx_step_matches_pytorch_over_30_frames(net, checkpoint, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "export"
    assert export_main([f"ckpt_path={checkpoint}", "format=onnx", f"size={SIZE}x{SIZE}", f"out={out}",
                        f"gap={GAP}"]) == 0
    manifest = json.loads((out / "mavos_export.json").read_text())
    assert manifest["long_term_gap"] == GAP and manifest["size"] == [SIZE, SIZE]
    options = ort.SessionOptions()  # as the README runs them: denormals flushed (InferenceSession does it too)
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    graphs = {name: ort.InferenceSession(str(out / g["file"]), options, providers=["CPUExecutionProvider"])
              for name, g in manifest["graphs"].items()}

    def run(name, feeds):
        return dict(zip(manifest["graphs"][name]["outputs"], graphs[name].run(None, feeds)))

    frames, mask = video()
    num_objects = np.array([2], dtype=np.int64)
    first = run("reference", {"frame": frames[0], "mask": mask, "num_objects": num_objects})
    state = {k: v for k, v in first.items() if k != "logits"}
    logits, masks = [first["logits"]], [mask]
    for t in range(1, FRAMES):
        result = run("step_write" if t % GAP == 0 else "step", {"frame": frames[t], "num_objects": num_objects,
                                                                **state})
        state.update({k[len("next_"):]: v for k, v in result.items() if k.startswith("next_")})
        logits.append(result["logits"])
        masks.append(result["mask"])
    assert state["memory_fused"][0] == 1.0
    want_logits, want_masks, margins = pytorch_reference(net, frames, mask, memorised=masks)
    assert all(set(np.unique(m).tolist()) == {0, 1, 2} for m in want_masks)  # the masks memorised hold objects
    for got, want in zip(logits, want_logits):
        assert np.abs(got[:, :3] - want[:, :3]).max() < 1e-4
        assert np.all(got[:, 3:] < -1e9)  # identities without objects
    # the step's own masks are PyTorch's argmax, but where two logits tie to within the 1e-4 asked above
    ties = 0
    for t in range(1, FRAMES):
        differ = masks[t] != want_masks[t]
        assert np.all(margins[t][differ] < 1e-4), t
        ties += int(differ.sum())
    assert ties <= 0.001 * FRAMES * SIZE * SIZE, ties


def test_torch_export_program_runs_and_leaves_the_network_as_it_was(net, tmp_path):
    from mavos.export import export_steps

    before, mode = {k: v.clone() for k, v in net.state_dict().items()}, net.training
    net.train()  # as in the middle of training
    try:
        manifest = export_steps(net, (SIZE, SIZE), tmp_path, format="torch_export", long_term_gap=GAP)
        assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    finally:
        net.train(mode)
    side = (SIZE - 1) // 4 + 1  # the stride-4 map of a 16k+1 input
    assert manifest["logits"].startswith(f"float32 (1, 1 + max_objects, {side}, {side})")
    programs = {name: torch.export.load(str(tmp_path / g["file"])).module() for name, g in manifest["graphs"].items()}
    frames, mask = video()
    frames = torch.from_numpy(frames)
    num_objects = torch.tensor([2])
    first = programs["reference"](frames[0], torch.from_numpy(mask), num_objects)
    state = list(first[1:])
    logits = [first[0]]
    for t in range(1, 4):  # frame 3 writes memory
        out = programs["step_write" if t % GAP == 0 else "step"](frames[t], num_objects, *state)
        state[6:12] = out[2:8]  # next short-term state
        if t % GAP == 0:
            state[0:6], state[12] = out[8:14], out[14]
        logits.append(out[0])
    want = pytorch_reference(net, frames[:4].numpy(), mask)[0]
    for got, w in zip(logits, want):
        assert np.abs(got.numpy()[:, :3] - w[:, :3]).max() < 1e-4


def test_an_export_that_stops_half_way_leaves_no_manifest_and_no_partial_file(net, tmp_path, monkeypatch):
    """Into a folder holding an earlier export: the write of the first graph dies half-way. The earlier manifest is
    gone (its graphs were being replaced), the earlier graph files are untouched, nothing partial is left."""
    from mavos.export import MANIFEST, export_steps

    out = tmp_path / "export"
    out.mkdir()
    (out / MANIFEST).write_text('{"graphs": {}}')
    (out / "reference.pt2").write_bytes(b"an earlier export's graph")

    def dies_half_way(program, path):
        Path(path).write_bytes(b"the first bytes of a graph")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch.export, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        export_steps(net, (SIZE, SIZE), out, format="torch_export", long_term_gap=GAP)
    assert sorted(p.name for p in out.iterdir()) == ["reference.pt2"]
    assert (out / "reference.pt2").read_bytes() == b"an earlier export's graph"


def test_growing_memory_export_is_refused(checkpoint, tmp_path):
    bank = build_network("deaot_mbv2")
    with pytest.raises(ExportError, match="grows with the video.*no fixed shape"):
        check_exportable(bank, (65, 65))
    fifo = build_network("mavos_mbv2", ["memory=fifo"])   # bounded, but not two slots from the start
    with pytest.raises(ExportError, match="fills up to 5 slots"):
        check_exportable(fifo, (65, 65))


@pytest.mark.parametrize("model,size,nearest", [
    ("mavos_mbv2", (480, 854), "465x849, 465x865, 481x849, 481x865"),
    ("mavos_mbv2", (481, 850), "481x849, 481x865"),   # a valid side is kept as it is
    ("mavos_mbv2", (480, 481), "465x481, 481x481"),
    ("mavos_swinb", (481, 849), "480x848, 480x864, 496x848, 496x864")])
def test_invalid_size_is_refused_naming_the_nearest(model, size, nearest):
    net = build_network(model)
    with pytest.raises(ExportError) as err:
        check_exportable(net, size)
    assert str(err.value).endswith(f"nearest valid sizes: {nearest}")


def test_cli_reports_bad_requests(checkpoint, tmp_path, capsys):
    assert export_main([f"ckpt_path={checkpoint}", "size=480x854", f"out={tmp_path}"]) == 1
    assert "16k+1" in capsys.readouterr().err
    assert export_main([f"ckpt_path={checkpoint}", "format=tflite", "size=65x65"]) == 2
    assert export_main(["size=65x65"]) == 2
    assert export_main([f"ckpt_path={checkpoint}", "size", "65x65"]) == 2  # not key=value: this command's usage
    err = capsys.readouterr().err
    assert "expected key=value, got 'size'" in err and "python -m mavos.export" in err
    assert export_main([f"ckpt_path={tmp_path / 'missing.ckpt'}", "size=65x65"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m mavos.export: error: ") and "does not exist" in err  # says which command
    assert export_main(["--help"]) == 0   # the usage and what each option means, on stdout
    assert "usage: python -m mavos.export" in (out := capsys.readouterr().out) and "16k+1 per side" in out
    # bad numbers and an output path that is a file: one line each, no traceback, nothing exported
    for option, said in (("gap=abc", "gap='abc': expected a whole number"), ("gap=0", "gap=0: must be at least 1"),
                         ("opset=x", "opset='x': expected a whole number"),
                         ("opset=17", "opset=17: the ONNX export (torch's dynamo exporter) writes opset 18")):
        assert export_main([f"ckpt_path={checkpoint}", "size=65x65", f"out={tmp_path / 'o'}", option]) == 1
        assert said in capsys.readouterr().err
    taken = tmp_path / "a_file"
    taken.write_text("mine")
    assert export_main([f"ckpt_path={checkpoint}", "size=65x65", f"out={taken}"]) == 1
    assert "a file is there" in capsys.readouterr().err and taken.read_text() == "mine"
    assert not (tmp_path / "o").exists()
