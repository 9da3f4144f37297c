"""InferenceSession: resolution rule, object groups beyond the ID bank, new objects mid-video, flip TTA."""
import re

import numpy as np
import pytest
import torch

from mavos.inference.session import InferenceSession, inference_size
from mavos.inference.step import soft_aggregate
from mavos.registry import build_network


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_network("mavos_mbv2").eval()


def frames(n, h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_inference_size_rule():
    assert inference_size(480, 854) == (481, 849)          # 479/16 -> 30 ; 853/16 -> 53.3 -> 53
    h, w = inference_size(1080, 1920, max_long_edge=1040)
    assert (h - 1) % 16 == 0 and (w - 1) % 16 == 0 and abs(w - 1040) <= 8
    assert inference_size(480, 854, max_short_edge=161) == (161, 289)
    assert inference_size(480, 854, multiple=(16, 0)) == (480, 848)


def test_soft_aggregation_of_two_groups():
    # group A holds object 1 strongly at pixel 0; group B holds its object (global id 2) at pixel 1
    a = torch.tensor([[0.0, 5.0], [5.0, 0.0]]).T.reshape(1, 2, 1, 2)   # (1, 1+1, 1, 2): bg, obj
    b = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).T.reshape(1, 2, 1, 2)
    merged = soft_aggregate([a, b], [1, 1])
    assert merged.shape == (1, 3, 1, 2)
    assert merged.argmax(1).flatten().tolist() == [1, 2]
    pa, pb = torch.softmax(a, 1), torch.softmax(b, 1)
    expected_bg = (pa[:, 0] * pb[:, 0]).clamp(1e-5, 1 - 1e-5)
    assert torch.allclose(torch.sigmoid(merged[:, 0]), expected_bg, atol=1e-6)


def test_more_objects_than_id_bank_run_in_groups(net):
    vid = frames(3)
    mask = np.zeros((40, 56), dtype=np.int64)
    for k in range(12):  # 12 objects > 10 identities
        mask[(k // 6) * 20:(k // 6) * 20 + 18, (k % 6) * 9:(k % 6) * 9 + 8] = k + 1
    session = InferenceSession(net, long_term_gap=1)
    session.add_objects(vid[0], mask)
    assert len(session.views[0]) == 2 and [t.num_objects for t in session.views[0]] == [[10], [2]]
    probs = session.step(vid[1])
    assert probs.shape == (13, 40, 56)
    assert torch.allclose(probs.sum(0), torch.ones(40, 56), atol=1e-4)
    # independently: objects 1-10 and 11-12 (as 1-2) each tracked alone, merged by soft aggregation
    low, high = InferenceSession(net, long_term_gap=1), InferenceSession(net, long_term_gap=1)
    low.add_objects(vid[0], np.where(mask <= 10, mask, 0))
    high.add_objects(vid[0], np.where(mask > 10, mask - 10, 0))
    alone = [torch.log(s.step(vid[1]).clamp_min(1e-30))[None] for s in (low, high)]
    expected = torch.softmax(soft_aggregate(alone, [10, 2])[0], dim=0)
    assert (probs - expected).abs().max() < 1e-4


def test_object_appearing_mid_video(net):
    vid = frames(4)
    first = np.zeros((40, 56), dtype=np.int64)
    first[5:15, 5:15] = 1
    session = InferenceSession(net)
    session.add_objects(vid[0], first)
    assert session.step(vid[1]).shape[0] == 2
    new = np.zeros_like(first)
    new[25:35, 30:45] = 2
    probs = session.step(vid[2], new)
    label = probs.argmax(0).numpy()
    assert probs.shape[0] == 3 and np.all(label[new == 2] == 2)
    assert session.step(vid[3]).shape[0] == 3


def test_flip_averages_the_mirrored_prediction(net):
    # 33x49 is an inference size already (16k+1): no resizing, so mirroring commutes exactly
    vid = frames(2, h=33, w=49, seed=3)
    mask = np.zeros((33, 49), dtype=np.int64)
    mask[10:30, 5:25] = 1
    plain, mirrored, both = InferenceSession(net), InferenceSession(net), InferenceSession(net, flip=True)
    plain.add_objects(vid[0], mask)
    mirrored.add_objects(vid[0][:, ::-1].copy(), mask[:, ::-1].copy())
    both.add_objects(vid[0], mask)
    p = plain.step(vid[1])
    m = mirrored.step(vid[1][:, ::-1].copy()).flip(-1)
    assert torch.allclose(both.step(vid[1]), (p + m) / 2, atol=1e-5)


def test_inputs_of_the_wrong_size_are_rejected(net):
    vid = frames(2)
    session = InferenceSession(net)
    with pytest.raises(ValueError, match="mask is"):
        session.add_objects(vid[0], np.ones((10, 10), dtype=np.int64))
    session = InferenceSession(net)
    session.add_objects(vid[0], np.pad(np.ones((10, 10), dtype=np.int64), ((0, 30), (0, 46))))
    with pytest.raises(ValueError, match="but the video is"):
        session.step(frames(1, h=30, w=30)[0])


def test_autocast_path_runs_and_stays_close_to_float32(net):
    """AMP (bf16 autocast) on the CPU exercises the same code path a GPU run takes."""
    vid = frames(2, h=33, w=49, seed=5)
    mask = np.zeros((33, 49), dtype=np.int64)
    mask[8:24, 8:30] = 1
    exact, amp = InferenceSession(net), InferenceSession(net, amp="bf16")
    exact.add_objects(vid[0], mask)
    amp.add_objects(vid[0], mask)
    p32, p16 = exact.step(vid[1]), amp.step(vid[1])
    assert p16.dtype == torch.float32 and p16.shape == p32.shape
    assert (p16 - p32).abs().max() < 0.1
    with pytest.raises(ValueError, match="amp=.int8.: expected one of null, none, fp16, bf16"):
        InferenceSession(net, amp="int8")


def test_amp_on_a_cpu_without_native_half_precision_warns_once_per_session(net, monkeypatch):
    """bf16 / fp16 autocast on a CPU that lacks the hardware for it is ~10x slower than float32: a warning that
    says so; none where the CPU has it, none for float32."""
    import warnings

    from mavos.inference import session as session_module

    asked = []
    monkeypatch.setattr(session_module, "cpu_computes_natively", lambda dtype: asked.append(dtype) or False)
    with pytest.warns(UserWarning, match="amp=bf16 on a CPU without native bf16 arithmetic") as record:
        InferenceSession(net, amp="bf16")
    assert len(record) == 1 and asked == [torch.bfloat16]
    with pytest.warns(UserWarning, match="amp=fp16 on a CPU without native fp16"):
        InferenceSession(net, amp="fp16")
    monkeypatch.setattr(session_module, "cpu_computes_natively", lambda dtype: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InferenceSession(net, amp="bf16")
        InferenceSession(net)


def test_tf32_switch_sets_both_cuda_flags_and_null_leaves_them(net):
    """session.tf32: true / false set TF32 for CUDA matmuls and cuDNN convolutions together; null leaves torch's
    settings as they were; anything else is refused, naming the key."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults
        InferenceSession(net)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
        InferenceSession(net, tf32=True)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        InferenceSession(net, tf32=False)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        with pytest.raises(ValueError, match="tf32=.yes.: expected true, false or null"):
            InferenceSession(net, tf32="yes")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_video_predictor_from_checkpoint(tmp_path, net):
    from mavos.inference.predictor import VideoPredictor

    ckpt = tmp_path / "net.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    predictor = VideoPredictor.from_checkpoint(str(ckpt), model="mavos_mbv2", device="cpu")
    vid = frames(4, h=33, w=49)
    first = np.zeros((33, 49), dtype=np.int64)
    first[5:15, 5:15] = 1
    new = np.zeros_like(first)
    new[20:30, 30:45] = 2
    out = list(predictor.propagate(vid, {1: first, 2: new}))
    assert [i for i, _ in out] == [1, 2, 3]
    assert np.array_equal(out[0][1], first)
    assert np.all(out[1][1][new == 2] == 2) and out[2][1].dtype == np.uint8


def test_uint8_tensor_frames_give_the_numpy_result(net):
    """Frames as (H, W, 3) uint8 tensors (what a decoder on the device hands over): at an inference size
    the result is the numpy path's exactly; resized frames go through torch's bicubic filter on the device,
    close to OpenCV's."""
    for h, w, tol in ((33, 49, 0.0), (40, 56, 0.05)):
        vid = frames(4, h=h, w=w, seed=7)
        mask = np.zeros((h, w), dtype=np.int64)
        mask[5:20, 8:30] = 1
        a, b = InferenceSession(net, long_term_gap=2), InferenceSession(net, long_term_gap=2)
        a.add_objects(vid[0], mask)
        b.add_objects(torch.from_numpy(vid[0]), torch.from_numpy(mask))
        for f in vid[1:]:
            pa, pb = a.step(f), b.step(torch.from_numpy(f))
            assert pb.shape == (2, h, w) and pb.device == b.device
            assert (pa - pb).abs().max() <= tol + 1e-6
            assert torch.equal(b.last_mask, pb.argmax(0))


def test_step_makes_no_host_synchronisation(net, monkeypatch):
    """No .item() / int(tensor) / bool(tensor) / .tolist() inside step() (on a GPU each would stall the
    pipeline), over regular frames and memory writes."""
    vid = [torch.from_numpy(f) for f in frames(6, h=33, w=49, seed=2)]
    mask = np.zeros((33, 49), dtype=np.int64)
    mask[8:24, 8:30] = 1
    session = InferenceSession(net, long_term_gap=2)
    session.add_objects(vid[0], mask)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside step()")

    for name in ("item", "__int__", "__index__", "__bool__", "__float__", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    outs = [session.step(f) for f in vid[1:]]  # frames 2 and 4 write long-term memory
    monkeypatch.undo()
    assert session.memory_slots == 2 and all(p.shape == (2, 33, 49) for p in outs)


def test_probabilities_are_channels_last(net):
    vid = frames(2, h=33, w=49)
    mask = np.zeros((33, 49), dtype=np.int64)
    mask[8:24, 8:30] = 1
    session = InferenceSession(net)
    session.add_objects(vid[0], mask)
    probs = session.step(vid[1])
    assert probs.stride(0) == 1  # (1 + K, H, W) view of a (H, W, 1 + K) tensor
    assert torch.equal(session.last_mask, probs.argmax(0))


def _squares(ids_and_places, h=40, w=56):
    mask = np.zeros((h, w), dtype=np.int64)
    for obj, (y, x) in ids_and_places:
        mask[y:y + 14, x:x + 16] = obj
    return mask


def test_ids_that_are_not_contiguous_are_tracked_as_the_network_was_trained(net):
    """Objects 3 and 7 are tracked as the network's 1 and 2 (order of first appearance) and come back as 3 and
    7: the same probabilities as a video given with ids 1 and 2, and no probability on ids never given."""
    vid = frames(4)
    given = InferenceSession(net, long_term_gap=2)
    plain = InferenceSession(net, long_term_gap=2)
    given.add_objects(vid[0], _squares([(3, (4, 4)), (7, (22, 30))]))
    plain.add_objects(vid[0], _squares([(1, (4, 4)), (2, (22, 30))]))
    for frame in vid[1:]:
        p, q = given.step(frame), plain.step(frame)
        assert p.shape == (8, 40, 56) and given.object_ids == [3, 7]
        assert torch.equal(p[[0, 3, 7]], q) and p[[1, 2, 4, 5, 6]].abs().max() == 0
        assert torch.equal(given.last_mask, torch.tensor([0, 3, 7])[plain.last_mask])


def test_an_object_with_a_lower_id_entering_later_keeps_its_own_id(net):
    """YouTube-VOS: object 2 from the first frame, object 1 from frame 2. The network sees them as 1 and 2 in
    that order (a video given that way is the expectation); before object 1 enters, no pixel is labelled 1."""
    vid = frames(5, seed=1)
    a, b = (6, 6), (20, 34)
    given, plain = InferenceSession(net, long_term_gap=2), InferenceSession(net, long_term_gap=2)
    given.add_objects(vid[0], _squares([(2, a)]))
    plain.add_objects(vid[0], _squares([(1, a)]))
    p, q = given.step(vid[1]), plain.step(vid[1])
    assert torch.equal(p[[0, 2]], q) and p[1].abs().max() == 0 and not (given.last_mask == 1).any()
    given.step(vid[2], _squares([(1, b)]))
    plain.step(vid[2], _squares([(2, b)]))
    swap = torch.tensor([0, 2, 1])
    assert given.object_ids == [2, 1] and torch.equal(given.last_mask, swap[plain.last_mask])
    for frame in vid[3:]:
        p, q = given.step(frame), plain.step(frame)
        assert torch.equal(p, q[swap]) and torch.equal(given.last_mask, swap[plain.last_mask])


def test_one_object_with_a_high_id_is_one_group(net):
    vid = frames(2)
    session = InferenceSession(net)
    session.add_objects(vid[0], _squares([(11, (10, 10))]))
    probs = session.step(vid[1])
    assert len(session.views[0]) == 1 and probs.shape[0] == 12
    assert set(torch.unique(session.last_mask).tolist()) <= {0, 11} and probs[1:11].abs().max() == 0


def test_void_is_not_an_object_and_bad_ids_are_refused(net):
    vid = frames(3)
    mask = _squares([(1, (10, 10))])
    bordered = mask.copy()
    bordered[0, :] = bordered[-1, :] = 255  # DAVIS's void label
    clean, void = InferenceSession(net), InferenceSession(net)
    clean.add_objects(vid[0], mask)
    with pytest.warns(UserWarning, match="255"):
        void.add_objects(vid[0], bordered)
    assert void.object_ids == [1] and len(void.views[0]) == 1
    assert torch.equal(void.step(vid[1]), clean.step(vid[1]))
    for bad, message in ((300, "300"), (-1, "-1")):
        with pytest.raises(ValueError, match=f"object id {message}"):
            InferenceSession(net).add_objects(vid[0], np.where(mask > 0, bad, 0))
    with pytest.raises(ValueError, match="integer object ids"):
        InferenceSession(net).add_objects(vid[0], mask.astype(np.float32))
    boolean, ints = InferenceSession(net), InferenceSession(net)   # a boolean mask (SAM2-style) is object 1
    boolean.add_objects(vid[0], mask > 0)
    ints.add_objects(vid[0], mask)
    assert boolean.object_ids == [1] and torch.equal(boolean.step(vid[1]), ints.step(vid[1]))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="only 255.*mask > 0"):
        InferenceSession(net).add_objects(vid[0], np.where(mask > 0, 255, 0).astype(np.uint8))   # cv2.imread's 0/255


def test_frames_of_every_dtype_mean_the_same_picture(net):
    """uint8 arrays and tensors are the reference; int64 frames are 0-255 too; float frames 0-255 or 0-1 as the
    video's first frame says, so that a dark frame (all values <= 1) later in a 0-255 video stays dark. At
    33x49, a size the network takes as it is (no resizing, where arrays and tensors take different filters)."""
    vid = frames(3, h=33, w=49, seed=2)
    vid[2] = (vid[2] // 200).astype(np.uint8)   # a dark frame: values 0 and 1
    mask = _squares([(1, (10, 10))], h=33, w=49)

    def run(convert):
        session = InferenceSession(net)
        session.add_objects(convert(vid[0]), mask)
        return torch.stack([session.step(convert(f)) for f in vid[1:]])

    reference = run(lambda f: f)
    assert torch.equal(run(torch.from_numpy), reference)
    for convert in (lambda f: torch.from_numpy(f).long(), lambda f: f.astype(np.int64),
                    lambda f: torch.from_numpy(f).float(), lambda f: f.astype(np.float32),
                    lambda f: torch.from_numpy(f).float() / 255, lambda f: f.astype(np.float64) / 255):
        assert (run(convert) - reference).abs().max() < 1e-5


def test_a_session_without_amp_runs_in_float32_inside_a_mixed_precision_caller(net):
    """Validation runs inside Lightning's mixed-precision step context; the session (amp unset) must score the
    float32 model there, as evaluate.py does, not the caller's bf16."""
    vid = frames(3, h=33, w=49)
    mask = _squares([(1, (10, 10))], h=33, w=49)

    def run():
        session = InferenceSession(net)
        session.add_objects(vid[0], mask)
        return torch.stack([session.step(f) for f in vid[1:]])

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = run()
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_settings_that_cannot_be_meant_are_refused_naming_the_option(net):
    """``flip="no"`` would read as true; a gap of 0 as 1; a size limit of 0 as 17 pixels: each is refused."""
    from mavos.inference.session import check_session_options

    for kwargs, said in (({"flip": "no"}, "flip='no': expected true or false"),
                         ({"compile": 1}, "compile=1: expected true or false"),
                         ({"tf32": "yes"}, "tf32='yes'"),
                         ({"long_term_gap": 0}, "long_term_gap=0: expected a whole number >= 1"),
                         ({"long_term_gap": -2}, "long_term_gap=-2"), ({"long_term_gap": 2.5}, "long_term_gap=2.5"),
                         ({"max_long_edge": 0}, "max_long_edge=0: expected a size in pixels > 0, or null"),
                         ({"max_short_edge": -480}, "max_short_edge=-480"),
                         ({"amp": "fp8"}, "amp='fp8': expected one of null, none, fp16, bf16")):
        with pytest.raises(ValueError, match=re.escape(said)):
            check_session_options(**kwargs)
        with pytest.raises(ValueError, match=re.escape(said)):
            InferenceSession(net, **kwargs)
    check_session_options(long_term_gap=np.int64(5), max_long_edge=480.0, flip=np.bool_(True), tf32=False)


def test_the_predictor_says_when_a_mask_cannot_be_used_and_16_bit_frames_are_refused(net):
    from mavos.inference.predictor import VideoPredictor

    predictor = VideoPredictor(net, device="cpu")
    vid = frames(3, h=33, w=49)
    mask = _squares([(1, (10, 10))], h=33, w=49)
    with pytest.raises(ValueError, match=r"masks given for frame\(s\) \[10\], but the video has 3 frames"):
        list(predictor.propagate(vid, {10: mask}))
    with pytest.raises(ValueError, match=r"masks given for frame\(s\) \[5\]"):   # one used, a later one not
        list(predictor.propagate(vid, {0: mask, 5: mask}))
    with pytest.raises(ValueError, match=r"whole numbers >= 0.*\[-1\]"):
        list(predictor.propagate(vid, {-1: mask}))
    deep = vid[0].astype(np.uint16) * 257   # the same picture as a 16-bit frame (0-65535)
    session = InferenceSession(net)
    with pytest.raises(ValueError, match=f"uint16 with values up to {int(deep.max())}: integer frames are 0-255"):
        session.add_objects(deep, mask)
    with pytest.raises(ValueError, match="torch.uint16 .*integer frames are 0-255"):
        session.add_objects(torch.from_numpy(deep.astype(np.int32)).to(torch.uint16), mask)


def test_frames_holding_nan_or_infinity_are_refused_naming_the_frame(net):
    """A NaN pixel makes every later probability NaN (and the masks arbitrary) without a word: arrays are checked
    on every frame, tensors on the first (reading a GPU tensor's values each frame would stall the step)."""
    vid = [f.astype(np.float32) / 255.0 for f in frames(3, h=33, w=49)]
    mask = _squares([(1, (10, 10))], h=33, w=49)
    for bad_value in (np.nan, np.inf):
        first = vid[0].copy()
        first[5, 7, 1] = bad_value
        with pytest.raises(ValueError, match="frame 0 holds NaN or infinite values"):
            InferenceSession(net).add_objects(first, mask)
        with pytest.raises(ValueError, match="frame 0 holds NaN or infinite values"):
            InferenceSession(net).add_objects(torch.from_numpy(first), mask)
    session = InferenceSession(net)
    session.add_objects(vid[0], mask)
    session.step(vid[1])
    later = vid[2].copy()
    later[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frame 2 holds NaN or infinite values"):
        session.step(later)
    assert torch.isfinite(session.step(vid[2])).all()  # the session goes on with a good frame
