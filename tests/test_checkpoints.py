"""Official checkpoint conversion: every key of the four released models lands in our network.

Fake official checkpoints are built from the key lists in tests/data/checkpoint_keys (key, shape, dtype of
the released files, copied from the official checkpoints' state dicts), filled with random tensors.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mavos.checkpoints.__main__ import main as cli_main
from mavos.checkpoints.convert import convert_official_state_dict, fit_to_model, unwrap_state_dict
from mavos.checkpoints.loading import load_network_weights
from mavos.registry import build_network
from mavos.model.backbone import SwinBEncoder
from tests.conftest import ROOT, run_python

KEY_LISTS = Path(__file__).resolve().parent / "data" / "checkpoint_keys"
# Parameter counts of the official models (reference/MAVOS.md, counted on the official code).
OFFICIAL_PARAMS = {"mavos_mbv2": 34_429_833, "mavos_r50": 41_077_385, "mavos_swinb": 91_566_145,
                   "deaot_mbv2": 13_167_342}
# Hand-written official -> ours pairs, one per kind of rename.
EXPECTED_NAMES = {
    "LSTT.layers.0.linear_QV.weight": "propagator.layers.0.linear_qv.weight",
    "LSTT.layers.1.linear_ID_U.bias": "propagator.layers.1.linear_id_u.bias",
    "LSTT.layers.2.self_attn.linear_V2.weight": "propagator.layers.2.self_attn.linear_v2.weight",
    "LSTT.layers.2.short_term_attn.relative_emb_k.weight": "propagator.layers.2.short_term_attn.relative_emb.weight",
    "LSTT.decoder_norms.0.gn.bias": "propagator.output_norm.bias",
    "patch_wise_id_bank.weight": "id_bank.conv.weight",
    "id_norm.weight": "id_bank.norm.weight",
    "decoder.conv_8x.gn.weight": "decoder.conv_8x.norm.weight",
    "decoder.adapter_4x.weight": "decoder.adapter_4x.weight",
    "encoder_projector.weight": "encoder_projector.weight",
}
EXPECTED_MCA_NAMES = {
    "long_term_memory_attention.0.0.joint_modulation.norm_l.weight": "memory.fusers.0.key.norm_new.weight",
    "long_term_memory_attention.1.1.joint_modulation.norm_c.bias": "memory.fusers.1.value.norm_old.bias",
    "long_term_memory_attention.2.3.joint_modulation.attn.h.weight": "memory.fusers.2.id_value.modulator.weight",
    "long_term_memory_attention.2.3.joint_modulation.attn.f_context.weight": "memory.fusers.2.id_value.context.weight",
    "long_term_memory_attention.1.0.joint_modulation.attn.focal_layers.1.0.weight":
        "memory.fusers.1.key.focal.1.weight",
    "long_term_memory_attention.0.1.joint_modulation.mlp.fc2.bias": "memory.fusers.0.value.mlp.2.bias",
    "long_term_memory_attention.0.3.joint_modulation.norm2.weight": "memory.fusers.0.id_value.norm_mlp.weight",
}
EXPECTED_SWIN_NAMES = {
    "encoder.layers.2.blocks.17.mlp.fc2.weight": "encoder.layers.2.blocks.17.mlp.3.weight",
    "encoder.layers.0.blocks.1.mlp.fc1.bias": "encoder.layers.0.blocks.1.mlp.0.bias",
    "encoder.layers.1.blocks.0.attn.relative_position_index": "encoder.layers.1.blocks.0.attn.relative_position_index",
    "encoder.layers.1.downsample.reduction.weight": "encoder.layers.1.downsample.reduction.weight",
    "encoder.norm2.weight": "encoder.norm2.weight",
}


def fake_official_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the keys, shapes and dtypes of an official checkpoint."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for line in (KEY_LISTS / f"{name}.tsv").read_text().splitlines()[1:]:
        key, shape, dtype, _ = line.split("\t")
        dims = [int(d) for d in shape.split("x")] if shape else []
        dt = getattr(torch, dtype)
        if dt.is_floating_point:
            state[key] = torch.randn(dims, generator=gen, dtype=dt)
        else:
            state[key] = torch.randint(0, 100, dims, generator=gen, dtype=dt)
    return state


@pytest.mark.parametrize("name", ["mavos_mbv2", "mavos_r50", "mavos_swinb", "deaot_mbv2"])
def test_official_keys_load_strictly(name):
    official = fake_official_state(name)
    wrapped = {"state_dict": {"module." + k: v for k, v in official.items()}, "step": 100} \
        if name == "mavos_r50" else official
    ours, unmapped = convert_official_state_dict(wrapped, with_mca=name.startswith("mavos"))
    assert unmapped == []
    net = build_network(name)
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL_PARAMS[name]
    fitted, missing, unexpected = fit_to_model(ours, net.state_dict(), name)
    assert missing == [] and unexpected == []
    assert len(fitted) == len(official)
    net.load_state_dict(fitted, strict=True)
    loaded = net.state_dict()
    names = dict(EXPECTED_NAMES)
    if name.startswith("mavos"):
        names |= EXPECTED_MCA_NAMES
    if name == "mavos_swinb":
        names |= EXPECTED_SWIN_NAMES
    for theirs, mine in names.items():
        assert torch.equal(loaded[mine], official[theirs]), (theirs, mine)
    # every official tensor is used exactly once: the loaded values are a permutation of the official ones
    assert sum(v.numel() for v in loaded.values()) == sum(v.numel() for v in official.values())
    assert torch.isclose(sum(v.double().sum() for v in loaded.values()),
                         sum(v.double().sum() for v in official.values()))


def test_unwrap_wrappers_and_prefixes():
    t = torch.ones(2)
    assert unwrap_state_dict({"model": {"module.a": t}}) == {"a": t}
    assert unwrap_state_dict({"ema": {"module.module.b": t}, "step": 3}) == {"b": t}
    with pytest.raises(ValueError, match="no state dict"):
        unwrap_state_dict({"step": 3, "name": "x"})


def test_wrong_shape_is_refused_with_key_and_source():
    official = fake_official_state("deaot_mbv2")
    official["LSTT.layers.1.linear_U.weight"] = torch.zeros(512, 128)
    ours, _ = convert_official_state_dict(official, with_mca=False)
    net = build_network("deaot_mbv2")
    with pytest.raises(ValueError, match=r"some/file\.pth.*propagator\.layers\.1\.linear_u\.weight.*\(512, 128\)"):
        fit_to_model(ours, net.state_dict(), "some/file.pth")


def test_linear_weight_for_1x1_conv_is_reshaped():
    official = fake_official_state("deaot_mbv2")
    official["encoder_projector.weight"] = official["encoder_projector.weight"].flatten(1)  # (256, 1280)
    ours, _ = convert_official_state_dict(official, with_mca=False)
    net = build_network("deaot_mbv2")
    fitted, missing, _ = fit_to_model(ours, net.state_dict())
    assert missing == []
    assert fitted["encoder_projector.weight"].shape == (256, 1280, 1, 1)
    assert torch.equal(fitted["encoder_projector.weight"].flatten(1), official["encoder_projector.weight"])


def test_mca_weights_are_not_used_by_a_bank_model():
    ours, unmapped = convert_official_state_dict(fake_official_state("mavos_mbv2"), with_mca=False)
    assert len(unmapped) == 180 and all(k.startswith("long_term_memory_attention.") for k in unmapped)
    assert not any(k.startswith("memory.") for k in ours)


def test_cli_end_to_end(tmp_path, capsys):
    official = fake_official_state("deaot_mbv2", seed=1)
    src = tmp_path / "DeAOTL_PRE_YTB_DAV.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}}, src)
    dst = tmp_path / "out" / "deaot.ckpt"
    assert cli_main(["convert", str(src), str(dst), "model=deaot_mbv2"]) == 0
    out = capsys.readouterr().out
    assert "unmapped official keys: none" in out and "missing keys: none" in out
    ckpt = torch.load(dst, map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["model"] == "deaot_mbv2" and "pytorch-lightning_version" in ckpt
    assert all(k.startswith("net.") for k in ckpt["state_dict"])
    net = build_network("deaot_mbv2")
    load_network_weights(net, dst)
    assert torch.equal(net.propagator.layers[2].linear_id_v.weight, official["LSTT.layers.2.linear_ID_V.weight"])
    assert not list(dst.parent.glob(".*"))  # atomic write leaves no temporary file

    # the same file is not a MAVOS checkpoint: refused, naming the file and the missing MCA weights
    assert cli_main(["convert", str(src), str(tmp_path / "x.ckpt"), "model=mavos_mbv2"]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "memory.fusers" in err
    assert not (tmp_path / "x.ckpt").exists()


def test_cli_refuses_wrong_shapes_and_bad_usage(tmp_path, capsys):
    official = fake_official_state("deaot_mbv2")
    official["decoder.conv_out.weight"] = torch.zeros(7, 128, 1, 1)
    src = tmp_path / "bad.pth"
    torch.save(official, src)
    assert cli_main(["convert", str(src), str(tmp_path / "o.ckpt"), "model=deaot_mbv2"]) == 1
    err = capsys.readouterr().err
    assert "bad.pth" in err and "decoder.conv_out.weight" in err
    assert cli_main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "o.ckpt"), "model=deaot_mbv2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m mavos.checkpoints convert: error: ") and "does not exist" in err
    assert cli_main(["convert", str(src), str(tmp_path / "o.ckpt")]) == 2
    # the module entry point runs as `python -m mavos.checkpoints`
    proc = run_python(["-m", "mavos.checkpoints"], cwd=ROOT)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_swinb_encoder_strides_freezing_and_padding():
    enc = SwinBEncoder(freeze_at=2).eval()
    # official SwinB-MAVOS with freeze_at=2: patch embedding and stage-0 blocks frozen, stage-0 merging trains
    assert not any(p.requires_grad for p in enc.patch_embed.parameters())
    assert not any(p.requires_grad for p in enc.layers[0].blocks.parameters())
    assert all(p.requires_grad for p in enc.layers[0].downsample.parameters())
    assert all(p.requires_grad for p in enc.layers[1].parameters())
    # 80 x 112: stride-4 map 20 x 28 is not a multiple of the 7-window in height, so windows are padded
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 80, 112))
    assert [tuple(f.shape) for f in feats] == [(1, 128, 20, 28), (1, 256, 10, 14), (1, 512, 5, 7), (1, 512, 5, 7)]
    assert feats[2] is feats[3]
    assert all(torch.isfinite(f).all() for f in feats)


def test_shift_mask_separates_wrapped_regions():
    from mavos.model.backbone import PaddedWindowAttention
    mask = PaddedWindowAttention.shift_mask(14, 7, window=7, shift=3, device=torch.device("cpu"))
    assert mask.shape == (2, 49, 49)
    # the map is one window wide, so within every window columns 0-3 and 4-6 (wrapped around from the left
    # edge) are separate regions; in the bottom window rows 4-6 also wrapped around from the top
    row, col = torch.arange(49) // 7, torch.arange(49) % 7
    for window, region in enumerate([(col >= 4).long(), (row >= 4).long() * 2 + (col >= 4).long()]):
        expected = (region[:, None] != region[None, :]).float() * -100.0
        assert torch.equal(mask[window], expected)


def test_a_checkpoint_trained_from_imagenet_weights_loads_where_that_file_is_not(tmp_path):
    """Training stores the whole network config, ImageNet file included; the checkpoint carries its own weights,
    so loading it elsewhere must not look for that file. A config that cannot be built says why (the root
    cause, not only Hydra's first line)."""
    from mavos.checkpoints.loading import NETWORK_KEY, CheckpointError, load_network, network_record
    from mavos.registry import network_config

    torch.manual_seed(0)
    net = build_network("mavos_mbv2")
    config = network_config("mavos_mbv2", ["model.net.encoder.weights=weights/mobilenet_v2-b0353104.pth"])
    assert config["encoder"]["weights"] == "weights/mobilenet_v2-b0353104.pth"
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                NETWORK_KEY: network_record(config, "mavos_mbv2")}, path)
    loaded = load_network(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))

    broken = {**config, "encoder": {**config["encoder"], "freeze_at": "not a number"}}
    torch.save({"state_dict": {}, NETWORK_KEY: network_record(broken, "mavos_mbv2")}, path)
    with pytest.raises(CheckpointError, match=r"trained\.ckpt.*cannot be built.*\((TypeError|ValueError): "):
        load_network(path)


def test_a_checkpoint_of_the_wrong_kind_says_what_to_do(tmp_path, capsys):
    """The authors' file given where ours is expected points to the converter; ours given to the converter says
    it needs no conversion; an empty file and a folder say so."""
    from mavos.checkpoints.loading import CheckpointError, load_network

    official = tmp_path / "MAVOS_mbv2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in fake_official_state("mavos_mbv2").items()}}, official)
    for model in (None, "mavos_mbv2"):
        with pytest.raises(CheckpointError, match=r"authors' code .*python -m mavos.checkpoints convert .*MAVOS_mbv2"):
            load_network(official, model)
    ours = tmp_path / "ours.ckpt"
    assert cli_main(["convert", str(official), str(ours), "model=mavos_mbv2"]) == 0
    capsys.readouterr()
    cases = {ours: "already a mavos checkpoint", tmp_path / "empty.pth": "the file is empty",
             tmp_path: "is a folder, not a checkpoint file"}
    (tmp_path / "empty.pth").write_bytes(b"")
    for src, said in cases.items():
        assert cli_main(["convert", str(src), str(tmp_path / "again.ckpt"), "model=mavos_mbv2"]) == 1
        err = capsys.readouterr().err
        assert said in err and "unsafe_load" not in err
    assert not (tmp_path / "again.ckpt").exists()
    # an existing folder as the output is refused before converting; a folder as ours names the file to give
    assert cli_main(["convert", str(official), str(tmp_path), "model=mavos_mbv2"]) == 1
    assert f"{tmp_path}: is a folder; give the converted checkpoint's file name" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"is a folder; give the checkpoint file in it \(e\.g\. .*last\.ckpt\)"):
        load_network(tmp_path)
