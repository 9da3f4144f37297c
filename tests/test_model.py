"""The network: parameter counts of the official models, attention and memory semantics, device-agnostic I/O."""
import math

import pytest
import torch

from mavos.inference.tracker import ObjectTracker, one_hot_mask
from mavos.registry import build_network
from mavos.model.attention import LocalGatedAttention
from mavos.model.layers import DepthwiseConv2d, shifted_depthwise_conv2d
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


def test_self_propagation_draws_droppath_separately_per_branch():
    """The visual and identity halves of the self-attention output get independent DropPath draws."""
    torch.manual_seed(0)
    layer = build_network("mavos_mbv2").propagator.layers[1].train()
    layer.droppath.p = 0.5
    b, n, d = 256, 4, layer.d_model

    class Constant(torch.nn.Module):
        """Stands in for an attention block: returns ``value`` everywhere."""

        def __init__(self, value: float):
            super().__init__()
            self.value = value

        def forward(self, q, *args, **kwargs):
            return torch.full((q.shape[0], q.shape[1], 2 * d), self.value)

    layer.long_term_attn = layer.short_term_attn = Constant(0.0)  # no long/short-term contribution
    layer.self_attn = Constant(1.0)
    x, x_id = torch.zeros(b, n, d), torch.zeros(b, n, d)
    memory = LayerMemory(torch.zeros(b, n, layer.d_att), torch.zeros(b, n, 2 * layer.expand_dim))
    new_x, new_id, _ = layer(x, x_id, memory, memory, (2, 2))
    kept_visual = new_x[:, 0, 0] > 0
    kept_identity = new_id[:, 0, 0] > 0
    # each branch is dropped for about half the samples (kept ones are scaled by 1/keep = 2) ...
    assert 0.3 < kept_visual.float().mean() < 0.7 and 0.3 < kept_identity.float().mean() < 0.7
    assert torch.all(new_x[kept_visual] == 2.0) and torch.all(new_id[kept_identity] == 2.0)
    # ... and not together: independent draws disagree on about half the samples
    assert 0.3 < (kept_visual != kept_identity).float().mean() < 0.7


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    storages = {}
    for t in tensors:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("memory,gap,frames,slots", [("bank", 1, 6, 6), ("mca", 1, 6, 2), ("fifo", 1, 6, 5)])
def test_long_term_memory_is_held_once(memory, gap, frames, slots):
    """The memory state holds each token once: layers x slots x tokens x (key 128 + values 1024) x 4 bytes."""
    torch.manual_seed(0)
    net = build_network("mavos_mbv2", [f"memory={memory}"]).eval()
    tracker = ObjectTracker(net, [1], long_term_gap=gap)
    mask = torch.zeros(1, 33, 33, dtype=torch.long)
    mask[:, 5:20, 5:25] = 1
    with torch.no_grad():
        tracker.reference(net.encode(torch.rand(1, 3, 33, 33)), one_hot_mask(mask, 10))
        for _ in range(frames - 1):
            tracker.propagate(net.encode(torch.rand(1, 3, 33, 33)))
            tracker.memorize(one_hot_mask(mask, 10))
    state = tracker.memory
    assert state.num_slots == slots
    held = [t for m in state.readout for t in m] + [t for layer in state.slots for m in layer for t in m]
    tokens = 3 * 3
    expected = 3 * slots * tokens * (128 + 1024) * 4
    assert storage_bytes(held) == expected


def test_mca_released_value_layout_hand_computed():
    """Released layout: the (B, C, H, W) modulator is reshaped straight to (B, N, heads, C/heads).

    C=4, heads=2, a 2x1 map. Weights make each step exact and readable: LayerNorm is the identity on the
    chosen tokens (mean 0, variance 1), q = k = 20 * tokens, whose per-head products make attention the
    identity (token n attends to token n); the context projection gives z = 10 + token (so GELU(z) = z to
    1e-18), the focal convolutions pass their centre tap, gates are (1, 0, 0), the modulator conv, the output
    projection are the identity and the MLP adds 0. So the output is tokens + v, v the value rows.
    """
    torch.manual_seed(0)
    block = ModulatedCrossAttention(4, heads=2, drop_path=0.0, value_layout="released").eval()
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        for norm in (block.norm_new, block.norm_old, block.norm_mlp):
            norm.weight.fill_(1.0)
        block.q.weight.copy_(20 * torch.eye(4))
        block.k.weight.copy_(20 * torch.eye(4))
        block.context.weight[:4].copy_(torch.eye(4))
        block.context.bias[:4].fill_(10.0)
        block.context.bias[4] = 1.0  # gate of focal level 0; levels 1 and the global context get 0
        for conv in block.focal:
            conv.weight[:, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
        block.modulator.weight[:, :, 0, 0] = torch.eye(4)
        block.proj.weight.copy_(torch.eye(4))
    tokens = torch.tensor([[[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]]])  # (B=1, N=2, C=4)
    # modulator m[c, p] = 10 + tokens[p, c]:   c0: 11 11 | c1: 11 9 | c2: 9 11 | c3: 9 9   (p0 p1)
    # released: flat (c-major) 11 11 11 9 9 11 9 9 -> value rows [11 11 11 9], [9 11 9 9]
    expected = tokens + torch.tensor([[[11.0, 11.0, 11.0, 9.0], [9.0, 11.0, 9.0, 9.0]]])
    got = block(tokens, tokens, (2, 1))
    assert torch.allclose(got, expected, atol=1e-3), got
    # the corrected layout reads column p of the map instead: value rows [11 11 9 9], [11 9 11 9]
    corrected = ModulatedCrossAttention(4, heads=2, drop_path=0.0, value_layout="corrected").eval()
    corrected.load_state_dict(block.state_dict())
    expected_corrected = tokens + torch.tensor([[[11.0, 11.0, 9.0, 9.0], [11.0, 9.0, 11.0, 9.0]]])
    assert torch.allclose(corrected(tokens, tokens, (2, 1)), expected_corrected, atol=1e-3)


@pytest.mark.parametrize("size,r,heads,batch", [((21, 10), 7, 1, 2), ((20, 23), 7, 2, 1), ((9, 6), 2, 1, 1),
                                                ((16, 9), 7, 1, 1)])
def test_banded_window_attention_equals_windowed_softmax(size, r, heads, batch):
    """Bands of query rows (several bands, padded last band, map borders, heads, batch) against the loop."""
    torch.manual_seed(0)
    d, dv = 8, 6
    layer = LocalGatedAttention(d_qk=16, d_vu=dv * heads, d_att=d, heads=heads, expand=1.0, max_distance=r).eval()
    n = size[0] * size[1]
    q, k, v = torch.randn(batch, n, d * heads), torch.randn(batch, n, d * heads), torch.randn(batch, n, dv * heads)
    got = layer.attend(q, k, v, size)
    win = (2 * r + 1) ** 2
    rel = layer.relative_emb(q.transpose(1, 2).reshape(batch, d * heads, *size)).reshape(batch, heads, win, n)
    want = torch.cat([windowed_attention_reference(q[..., h * d:(h + 1) * d], k[..., h * d:(h + 1) * d],
                                                   v[..., h * dv:(h + 1) * dv], rel[:, h], size, r)
                      for h in range(heads)], dim=-1)
    assert torch.allclose(got, want, atol=1e-5)


def test_banded_window_attention_has_finite_gradients():
    """Padded query rows of the last band must not leak NaN into the gradients (training)."""
    torch.manual_seed(0)
    layer = LocalGatedAttention(d_qk=16, d_vu=8, d_att=8, heads=1, expand=1.0, max_distance=7)
    q, k, v = (torch.randn(2, 21 * 10, 8, requires_grad=True) for _ in range(3))
    layer.attend(q, k, v, (21, 10)).square().sum().backward()
    assert layer.bands((21, 10), q.device).bands == 11  # 21 rows in bands of 2: the last is padded
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, layer.relative_emb.weight))


@pytest.mark.parametrize("model", ["mavos_mbv2", "mavos_r50"])
def test_folded_encoder_matches_the_encoder(model):
    """Eval mode runs a copy with BatchNorm folded into the convolutions: same features; training does not."""
    from tests.golden_scenario import seeded_weights

    torch.manual_seed(0)
    net = seeded_weights(build_network(model))
    x = torch.rand(1, 3, 65, 97)
    with torch.no_grad():
        want = net.encoder((x - net.pixel_mean) / net.pixel_std)
        folded = net.inference_encoder()
        assert folded is not net.encoder
        assert not any(isinstance(m, (torch.nn.BatchNorm2d,)) or type(m).__name__ == "FrozenBatchNorm2d"
                       for m in folded.modules())
        depthwise = [m for m in folded.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
        assert all(type(m) is DepthwiseConv2d for m in depthwise)
        assert len(depthwise) == (17 if model == "mavos_mbv2" else 0)  # MobileNetV2's inverted residuals
        got = net.encode(x).skips
        for a, b in zip(want[:3], got):
            assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()))
        # a weight change (an optimizer step, a checkpoint load) rebuilds the copy
        net.encoder.state_dict()[next(k for k in net.encoder.state_dict() if k.endswith("running_mean"))].add_(1.0)
        assert net.inference_encoder() is not folded
        assert net.inference_encoder() is net.inference_encoder()
    net.train()
    assert net.inference_encoder() is net.encoder
    assert sum(1 for m in net.encoder.modules() if type(m).__name__ == "FrozenBatchNorm2d") > 0


@pytest.mark.parametrize("kernel,stride,padding,dilation,bias", [(3, 1, 1, 1, True), (3, 2, 1, 1, True),
                                                                   (5, 1, 2, 1, False), (3, 2, 2, 2, True)])
def test_shifted_depthwise_conv_equals_conv2d(kernel, stride, padding, dilation, bias):
    """The compiled-on-CUDA form of DepthwiseConv2d (a sum of shifted slices) against F.conv2d: odd sizes,
    strides, dilation, channels-last input; in float32 and under bf16 autocast (bf16 in, bf16 out)."""
    torch.manual_seed(0)
    c = 6
    x = torch.randn(2, c, 13, 18).contiguous(memory_format=torch.channels_last)
    weight, b = torch.randn(c, 1, kernel, kernel), (torch.randn(c) if bias else None)
    want = torch.nn.functional.conv2d(x, weight, b, stride, padding, dilation, groups=c)
    got = shifted_depthwise_conv2d(x, weight, b, (stride, stride), (padding, padding), (dilation, dilation))
    assert got.shape == want.shape and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.nn.functional.conv2d(x, weight, b, stride, padding, dilation, groups=c)
        got = shifted_depthwise_conv2d(x, weight, b, (stride, stride), (padding, padding), (dilation, dilation))
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want.float(), atol=0.05 * float(want.abs().max()))
