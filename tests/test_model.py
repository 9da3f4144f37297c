"""The network: parameter counts of the official models, attention and memory semantics, device-agnostic I/O."""
import math

import pytest
import torch

from mavos.inference.tracker import ObjectTracker, one_hot_mask
from mavos.registry import build_network
from mavos.model.attention import LocalGatedAttention
from mavos.model.mca import ModulatedCrossAttention
from mavos.model.memory import BankMemory, FIFOMemory, MCAMemory
from mavos.model.propagation import LayerMemory

# Counts of the released models (../shared/reference/MAVOS.md, counted from the official code).
OFFICIAL_PARAMS = {"mavos_mbv2": 34_429_833, "deaot_mbv2": 13_167_342, "mavos_r50": 41_077_385}


@pytest.mark.parametrize("model", list(OFFICIAL_PARAMS))
def test_parameter_count_matches_official(model):
    net = build_network(model)
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL_PARAMS[model]


def test_mca_blocks_hold_the_documented_share():
    mca = MCAMemory()
    assert sum(p.numel() for p in mca.parameters()) == 21_262_491


def windowed_attention_reference(q, k, v, rel, size, r):
    """Independent loop form of the short-term attention: softmax over the (2r+1)^2 in-bounds neighbours."""
    b, n, d = q.shape
    h, w = size
    out = torch.zeros(b, n, v.shape[-1])
    win = 2 * r + 1
    for p in range(n):
        qy, qx = divmod(p, w)
        keys, scores = [], []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                ky, kx = qy + dy, qx + dx
                if 0 <= ky < h and 0 <= kx < w:
                    kp = ky * w + kx
                    keys.append(kp)
                    scores.append((q[:, p] * k[:, kp]).sum(-1) / math.sqrt(d) + rel[:, (dy + r) * win + dx + r, p])
        attn = torch.softmax(torch.stack(scores, -1), -1)
        out[:, p] = torch.einsum("bk,bkc->bc", attn, v[:, keys])
    return out


def test_local_attention_equals_windowed_softmax():
    torch.manual_seed(0)
    size, r, d = (5, 6), 2, 8
    layer = LocalGatedAttention(d_qk=16, d_vu=8, d_att=d, heads=1, expand=1.0, max_distance=r).eval()
    n = size[0] * size[1]
    q, k, v = torch.randn(2, n, d), torch.randn(2, n, d), torch.randn(2, n, 8)
    # Replace dwconv/projection by identity to observe the attention itself.
    layer.dw_conv.conv.weight.data.zero_()
    layer.dw_conv.conv.weight.data[:, 0, 2, 2] = 1.0
    layer.projection.weight.data = torch.eye(8)
    layer.projection.bias.data.zero_()
    got = layer(q, k, v, torch.ones(2, n, 8), size)
    rel = layer.relative_emb(q.transpose(1, 2).reshape(2, d, *size)).reshape(2, (2 * r + 1) ** 2, n)
    want = windowed_attention_reference(q, k, v, rel, size, r)
    assert torch.allclose(got, want, atol=1e-5)


def test_mca_value_layouts_differ_only_in_value_arrangement():
    torch.manual_seed(0)
    a = ModulatedCrossAttention(8, heads=2, value_layout="released").eval()
    b = ModulatedCrossAttention(8, heads=2, value_layout="corrected").eval()
    b.load_state_dict(a.state_dict())
    new, old = torch.randn(1, 12, 8), torch.randn(1, 12, 8)
    ya, yb = a(new, old, (3, 4)), b(new, old, (3, 4))
    assert ya.shape == yb.shape == (1, 12, 8)
    assert not torch.allclose(ya, yb)
    # corrected layout: the value of token n is column n of the modulator map
    m = b.modulator_map(b.norm_old(old), (3, 4)).flatten(2).transpose(1, 2)
    q = b.q(b.norm_new(new)).reshape(1, 12, 2, 4).transpose(1, 2)
    k = b.k(b.norm_old(old)).reshape(1, 12, 2, 4).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1)
    y = (attn @ m.reshape(1, 12, 2, 4).transpose(1, 2)).transpose(1, 2).reshape(1, 12, 8)
    y = new + b.proj(y)
    y = y + b.mlp(b.norm_mlp(y))
    assert torch.allclose(yb, y, atol=1e-5)


def _layer_memory(n, value=0.0):
    t = lambda c: torch.full((1, n, c), value)  # noqa: E731
    return [LayerMemory(t(128), t(1024)) for _ in range(3)]


def test_memory_policies_slot_counts():
    ref = _layer_memory(6)
    size = (2, 3)
    mca, bank, fifo = MCAMemory().eval(), BankMemory(), FIFOMemory(capacity=2)
    states = {p: p.init(ref) for p in (mca, bank, fifo)}
    for step in range(5):
        for p in states:
            states[p] = p.write(states[p], _layer_memory(6, step + 1.0), size)
    assert states[mca].num_slots == 2 and states[mca].num_tokens == 12
    assert states[bank].num_slots == 6 and states[bank].num_tokens == 36
    assert states[fifo].num_slots == 3
    # FIFO keeps the reference and the two most recent frames
    fifo_values = [float(s.key[0, 0, 0]) for s in states[fifo].slots[0]]
    assert fifo_values == [0.0, 4.0, 5.0]
    # MCA's memory is [recurrent, reference]; the reference slot is never overwritten
    assert torch.equal(states[mca].slots[0][1].key, ref[0].key)


def test_mca_first_write_is_the_new_frame_then_fused():
    ref, first, second = _layer_memory(6, 0.0), _layer_memory(6, 1.0), _layer_memory(6, 2.0)
    mca = MCAMemory().eval()
    s = mca.write(mca.init(ref), first, (2, 3))
    assert torch.equal(s.slots[0][0].key, first[0].key)
    s2 = mca.write(s, second, (2, 3))
    expected = mca.fusers[0]["key"](second[0].key, first[0].key, (2, 3))
    assert torch.allclose(s2.slots[0][0].key, expected)
    expected_id = mca.fusers[0]["id_value"](second[0].id_value, first[0].id_value, (2, 3))
    assert torch.allclose(s2.slots[0][0].id_value, expected_id)


@pytest.mark.parametrize("memory,slots", [("mca", 2), ("bank", 1 + 49 // 5)])
def test_long_term_memory_over_50_frames(memory, slots):
    """MAVOS keeps exactly two slots over a 50-frame video; DeAOT grows by one slot per gap."""
    torch.manual_seed(0)
    net = build_network("mavos_mbv2", [f"memory={memory}"]).eval()
    size = 33
    frames = torch.rand(50, 1, 3, size, size)
    mask = torch.zeros(1, size, size, dtype=torch.long)
    mask[:, 8:20, 8:20] = 1
    tracker = ObjectTracker(net, [1], long_term_gap=5)
    counts = []
    with torch.no_grad():
        tracker.reference(net.encode(frames[0]), one_hot_mask(mask, 10))
        for t in range(1, 50):
            logits = tracker.propagate(net.encode(frames[t]))
            assert logits.shape == (1, 11, 9, 9)
            tracker.memorize(torch.softmax(logits, 1).repeat_interleave(4, -1).repeat_interleave(4, -2)[..., :size, :size])
            counts.append(tracker.memory.num_slots)
    assert counts[-1] == slots
    assert max(counts) == slots
    tokens = tracker.memory.num_tokens
    assert tokens == slots * 9


def test_unused_identities_are_masked_out():
    torch.manual_seed(0)
    net = build_network("mavos_mbv2").eval()
    tracker = ObjectTracker(net, [2])
    mask = torch.zeros(1, 33, 33, dtype=torch.long)
    mask[:, :10, :10], mask[:, 20:, 20:] = 1, 2
    with torch.no_grad():
        logits = tracker.reference(net.encode(torch.rand(1, 3, 33, 33)), one_hot_mask(mask, 10))
    probs = torch.softmax(logits, 1)
    assert torch.all(probs[:, 3:] < 1e-6)


def test_mask_with_more_objects_than_id_bank_is_rejected():
    with pytest.raises(ValueError, match="ID bank holds 10"):
        one_hot_mask(torch.full((1, 4, 4), 11), 10)


def test_frame_and_mask_of_different_sizes_are_rejected():
    net = build_network("mavos_mbv2").eval()
    tracker = ObjectTracker(net, [1])
    with torch.no_grad(), pytest.raises(ValueError, match="frame and mask sizes must match"):
        tracker.reference(net.encode(torch.rand(1, 3, 33, 33)), one_hot_mask(torch.zeros(1, 49, 49, dtype=torch.long), 10))


def test_gradients_reach_memory_fusers_in_training():
    """Training unrolls through the MCA writes: its blocks must receive gradients."""
    from mavos.training.module import VOSLitModule

    torch.manual_seed(0)
    module = VOSLitModule(build_network("mavos_mbv2"), total_steps=10).train()
    frames = torch.rand(1, 6, 3, 33, 33)
    masks = torch.zeros(1, 6, 33, 33, dtype=torch.long)
    masks[:, :, 5:20, 5:20] = 1
    frame_loss, aux_loss, preds = module.unroll(frames, masks, torch.tensor([1]), step=0)
    (frame_loss + aux_loss).backward()
    assert preds.shape == (1, 6, 33, 33)
    grads = [p.grad for p in module.net.memory.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_missing_imagenet_weights_name_the_file_and_the_source(tmp_path):
    from mavos.model.backbone import MobileNetV2Encoder

    missing = tmp_path / "mobilenet_v2-b0353104.pth"
    with pytest.raises(FileNotFoundError) as err:
        MobileNetV2Encoder(weights=str(missing))
    assert str(missing) in str(err.value) and "download.pytorch.org" in str(err.value)


def test_imagenet_weights_load_from_a_local_torchvision_file(tmp_path):
    from torchvision.models import mobilenet_v2

    from mavos.model.backbone import MobileNetV2Encoder

    torch.manual_seed(1)
    reference = mobilenet_v2(weights=None)
    path = tmp_path / "mbv2.pth"
    torch.save(reference.state_dict(), path)
    enc = MobileNetV2Encoder(weights=str(path))
    assert torch.equal(enc.features[5].conv[1][0].weight, reference.features[5].conv[1][0].weight)
    assert torch.equal(enc.features[5].conv[1][1].running_var, reference.features[5].conv[1][1].running_var)
