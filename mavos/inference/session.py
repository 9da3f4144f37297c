"""InferenceSession: segment one video frame by frame (the streaming API behind evaluate.py and scripts).

It hides what the network should not know about: resizing to the inference resolution (long edge <=
``max_long_edge``, sizes 16k+1) and back, objects beyond the ID bank (groups of ``max_objects`` merged by
soft aggregation), objects appearing mid-video, flip test-time augmentation and autocast. The memory
itself is handled by ``ObjectTracker`` exactly as in training.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mavos.inference.denormals import flush_denormals
from mavos.inference.host_memory import keep_freed_memory
from mavos.inference.step import CompiledFrameStep, FrameLayout, FrameStep, group_one_hots
from mavos.inference.tracker import ObjectTracker, one_hot_mask
from mavos.model.vos import VOSNetwork
from mavos.registry import ConfigError

AMP_DTYPES = {None: None, "none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_computes_natively(dtype: torch.dtype) -> bool:
    """Whether this CPU has oneDNN's bf16 / fp16 kernels (AVX512-BF16, AMX, AVX512-FP16). Without them autocast
    to that dtype is slower than float32: PyTorch splits a half-precision depthwise convolution into one
    convolution per channel and emulates the matmuls (MobileNetV2 at 65x65 on a 2-core AVX2 EPYC: bf16 476, fp16
    465, float32 47 ms a frame)."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    return bool(getattr(torch.ops.mkldnn, check)())


def set_tf32(enabled: bool | None) -> None:
    """TF32 tensor cores for float32 matmuls and convolutions on CUDA (``True``), strict float32 (``False``), or
    torch's own defaults left alone (``None``: TF32 convolutions, float32 matmuls). A process-wide switch in
    torch, so it is set once, not per frame: on an H100 it took MobileNetV2's compiled fp32 step from 6.95 to
    3.6 ms at 480p (docs/speed_log.md)."""
    if enabled is None:
        return
    if not isinstance(enabled, bool):
        raise ValueError(f"tf32 must be true, false or null, got {enabled!r}")
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def inference_size(height: int, width: int, max_long_edge: float | None = 1040, max_short_edge: float | None = None,
                   multiple: tuple[int, int] = (16, 1)) -> tuple[int, int]:
    """The evaluation resolution: restrict short then long edge, then round each side to a*k + b."""
    h, w = float(height), float(width)
    if max_short_edge is not None and min(h, w) > max_short_edge:
        s = max_short_edge / min(h, w)
        h, w = h * s, w * s
    if max_long_edge is not None and max(h, w) > max_long_edge:
        s = max_long_edge / max(h, w)
        h, w = h * s, w * s
    a, b = multiple
    out = []
    for side in (int(h), int(w)):
        if (side - b) % a != 0:
            side = int(np.around((side - b) / a) * a + b)
        out.append(max(side, a + b))
    return out[0], out[1]


def check_session_options(long_term_gap=None, max_long_edge=1040, max_short_edge=None, flip=False, amp=None,
                          compile=False, tf32=None) -> None:
    """Refuse settings that cannot be meant, naming the option (``long_term_gap=0: ...``): a string where a
    switch is expected (``flip=no`` would read as true), a memory gap below 1, a size limit of 0 or less (null is
    "no limit"), an unknown precision. evaluate.py and train.py check their ``session.*`` with it before loading
    anything; every ``InferenceSession`` checks its own arguments with it too."""
    for key, value in (("flip", flip), ("compile", compile)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{key}={value!r}: expected true or false")
    if tf32 is not None and not isinstance(tf32, bool):
        raise ValueError(f"tf32={tf32!r}: expected true, false or null")
    if long_term_gap is not None and (isinstance(long_term_gap, bool) or not isinstance(long_term_gap, numbers.Integral)
                                      or long_term_gap < 1):
        raise ValueError(f"long_term_gap={long_term_gap!r}: expected a whole number >= 1 (frames between memory "
                         f"writes), or null for the memory's own test gap")
    for key, value in (("max_long_edge", max_long_edge), ("max_short_edge", max_short_edge)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0):
            raise ValueError(f"{key}={value!r}: expected a size in pixels > 0, or null for no limit")
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r}: expected one of {', '.join('null' if k is None else k for k in AMP_DTYPES)}")


def check_session_config(options: Mapping) -> None:
    """``check_session_options`` over a config's ``session`` node (evaluate.py, train.py's validation): a
    ConfigError naming ``session.<option>``."""
    try:
        check_session_options(**options)
    except ValueError as e:
        raise ConfigError(f"session.{e}") from None


class InferenceSession:
    """One video. ``add_objects(frame, mask)`` on the first frame, then ``step(frame)`` per frame
    (``step(frame, mask)`` when new objects appear in ``mask``). Both return probabilities
    (1 + K, H, W) at the frame's own resolution, K = highest object id so far; the tensor is a view of a
    channels-last (H, W, C) tensor, C >= 1 + K (``probs.argmax(0)`` is then fast), on the session's device.
    ``last_mask`` holds the (H, W) int64 object ids of the last frame (the argmax the session computed).

    frame, any of:
      - (H, W, 3) uint8 RGB numpy array (resized with OpenCV's bicubic filter, as the official evaluation);
      - (H, W, 3) uint8 torch tensor, on any device (moved to the session's device, resized there with
        ``F.interpolate(mode="bicubic")``: a decoder may hand over frames already on the GPU);
      - other integer arrays or tensors: 0-255, as uint8;
      - float arrays or tensors: 0-1, or 0-255 when the video's first frame has a value above 1 (decided once
        per video, so that a dark frame later on is not rescaled); NaN or infinity is refused (arrays: every
        frame; tensors: the first frame, as reading a GPU tensor's values would stall every step).
    mask: (H, W) integer object ids, numpy or torch: 0 background, 1-254 objects, 255 DAVIS's void (not an
      object: ignored, with one warning). Ids need not be contiguous (YouTube-VOS's object 1 may enter after
      object 2): the network sees the objects numbered 1..n in order of first appearance, as in the official
      evaluation, and ``last_mask`` and the probabilities' channels are the given ids again (``object_ids``:
      the given ids in the network's order).
    compile: run the per-frame step compiled (``CompiledFrameStep``: a frame is one compiled function,
      ``segment``, and a memory write one more, shared by all sessions of the network; on CUDA replayed from
      the session's own CUDA graphs): needs a fixed-size memory (MCA); otherwise, or where compiling fails, one
      warning and eager execution. Compiled functions are specialised to the frame size: each new inference
      size compiles again. On the CPU the weights are frozen into the compiled code (inductor's freezing:
      folded and prepacked for oneDNN), and a network whose weights changed since compiles anew.
    tf32: TF32 for float32 work on CUDA (true), strict float32 (false), torch's defaults (null); see ``set_tf32``:
      process-wide, so give every session of a process the same value.
    On the CPU a session keeps the process's freed memory for reuse (``host_memory.keep_freed_memory``: glibc's
    mmap and trim thresholds raised, once per process, unless the allocator is the user's own choice), and flushes
    denormal floats to zero on the threads that step it (``denormals.flush_denormals``: values below 1.2e-38).

    ``add_objects``, ``step`` and ``warm_up`` run under ``torch.inference_mode`` whatever the caller's mode, so
    that what ``warm_up`` compiles and records serves the video: dynamo guards the mode, and a CUDA graph's
    buffers made in one mode cannot serve the other (a warm-up outside ``inference_mode`` before a video inside
    it recorded every graph again on an H100). The results are inference tensors: ``clone()`` one to change it
    in place outside inference mode.
    """

    tensor_frames = True  # step/add_objects accept (H, W, 3) uint8 tensors on any device

    def __init__(self, net: VOSNetwork, long_term_gap: int | None = None, max_long_edge: float | None = 1040,
                 max_short_edge: float | None = None, flip: bool = False, amp: str | None = None,
                 device: torch.device | str | None = None, compile: bool = False, tf32: bool | None = None):
        check_session_options(long_term_gap, max_long_edge, max_short_edge, flip, amp, compile=compile, tf32=tf32)
        self.net = net.eval()
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.long_term_gap = net.memory.test_gap if long_term_gap is None else int(long_term_gap)
        self.max_long_edge, self.max_short_edge = max_long_edge, max_short_edge
        self.flip = flip
        self.amp, self.amp_dtype = amp, AMP_DTYPES[amp]
        if self.amp_dtype is not None and self.device.type == "cpu" and not cpu_computes_natively(self.amp_dtype):
            warnings.warn(f"amp={amp} on a CPU without native {amp} arithmetic (no AVX512-BF16 / AMX / AVX512-FP16 "
                          f"found by oneDNN): autocast runs about 10x slower than float32 here; leave amp unset "
                          f"(null) on this machine", stacklevel=2)
        set_tf32(tf32)
        if self.device.type == "cpu":
            keep_freed_memory()  # a frame's large temporaries reuse the last frame's pages (host_memory.py)
        self.compile = bool(compile)
        self.step_functions = CompiledFrameStep.shared(net, self.device) if compile else FrameStep(net)
        self.num_objects = 0
        self.object_ids: list[int] = []  # given ids; the network's id of object_ids[k] is k + 1
        self._given_to_network: torch.Tensor | None = None  # (256,) given id -> network id
        self._network_to_given: torch.Tensor | None = None  # (1 + n,) network id -> given id; None: the same ids
        self._float_range: float | None = None
        self._warned_void = False
        self.frame_index = -1
        self.views: list[list[ObjectTracker]] = [[] for _ in range(2 if flip else 1)]
        self.input_size: tuple[int, int] | None = None
        self.frame_size: tuple[int, int] | None = None
        self.last_mask: torch.Tensor | None = None

    # ---------------------------------------------------------------- helpers
    @property
    def group_size(self) -> int:
        return self.net.max_objects

    def _group_sizes(self, count: int | None = None) -> list[int]:
        """Objects in each group of at most ``group_size`` (this video's ``num_objects``, or ``count``)."""
        n, g = self.num_objects if count is None else count, self.group_size
        return [min(g, n - i * g) for i in range(max(1, math.ceil(n / g)))]

    def _compiled_group_sizes(self, count: int | None = None) -> tuple[int, ...]:
        """The group sizes a compiled step specialises on: one group carries all its identities."""
        sizes = tuple(self._group_sizes(count))
        return (self.group_size,) if len(sizes) == 1 else sizes

    def _autocast(self):
        """The session's precision, whatever the caller's: without ``amp`` autocast is switched off, so that
        validation inside a mixed-precision training step scores the float32 model that evaluate.py scores."""
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _set_frame_size(self, h: int, w: int) -> None:
        if self.frame_size is None:
            self.frame_size = (h, w)
            self.input_size = inference_size(h, w, self.max_long_edge, self.max_short_edge, self.net.size_multiple)
        elif (h, w) != self.frame_size:
            raise ValueError(f"frame {self.frame_index + 1} is {h}x{w} but the video is {self.frame_size[0]}x"
                             f"{self.frame_size[1]}")

    def _to_input(self, frame) -> torch.Tensor:
        """Frame -> (V, 3, h, w) float tensor in [0, 1] at inference size on the device (V = 2 with flip)."""
        if isinstance(frame, torch.Tensor):
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frame must be (H, W, 3) RGB, got shape {tuple(frame.shape)}")
            if frame.dtype in (torch.uint16, torch.int16):
                raise ValueError(f"frame is {frame.dtype} (16-bit?): integer frames are 0-255 (uint8); pass "
                                 f"frame / 65535 as floats, or frame >> 8 as uint8")
            self._set_frame_size(*frame.shape[:2])
            x = frame.to(self.device, non_blocking=True).permute(2, 0, 1)[None]
            if frame.is_floating_point():  # range and finiteness read on the first frame only (a host sync)
                x = x.float() / self._video_float_range(lambda: [float(v) for v in torch.aminmax(x)])
            else:
                x = x.float() / 255.0
            if self.input_size != self.frame_size:
                x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False)
        else:
            arr = np.asarray(frame)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"frame must be (H, W, 3) RGB, got shape {arr.shape}")
            if arr.dtype.kind in "iu" and arr.dtype != np.uint8 and arr.size and int(arr.max()) > 255:
                raise ValueError(f"frame is {arr.dtype} with values up to {int(arr.max())}: integer frames are "
                                 f"0-255 (uint8); pass 16-bit frames as floats (frame / 65535) or frame >> 8")
            self._set_frame_size(*arr.shape[:2])
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise self._not_finite()  # host memory: checked on every frame
            scale = (255.0 / self._video_float_range(lambda: [float(arr.min()), float(arr.max())])
                     if arr.dtype.kind == "f" else 1.0)
            arr = arr.astype(np.float32) * scale
            ih, iw = self.input_size
            if (ih, iw) != self.frame_size:
                arr = cv2.resize(arr, (iw, ih), interpolation=cv2.INTER_CUBIC)
            x = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device).permute(2, 0, 1)[None] / 255.0
        # (1, 3, h, w) channels-last: the layout the encoder runs in, with the batch stride of a channels-last copy
        # (3hw): a size-1 dimension's stride is free, and the paths above leave 3 or 3hw (numpy and no resizing,
        # or torch's resizing), which a compiled step's guards tell apart (a CPU evaluation, whose warm-up
        # rehearses on tensors and whose videos are arrays, compiled again inside its first video)
        x = x.contiguous(memory_format=torch.channels_last)
        if x.stride(0) != x[0].numel():
            x = x.as_strided(x.shape, (x[0].numel(), *x.stride()[1:]))
        return torch.cat([x, x.flip(-1)]) if self.flip else x

    def _flush_denormals(self) -> None:
        """On the CPU, denormal floats flushed to zero on the thread that steps this session and its OpenMP team
        (``denormals.py``: a sharp attention's tiny weights would otherwise slow its matmuls many times over);
        once per thread, a thread-local lookup after that."""
        if self.device.type == "cpu":
            flush_denormals()

    def _video_float_range(self, extremes) -> float:
        """1 or 255: the scale of this video's float frames, from the first one's ``extremes()`` (min, max);
        a first frame holding NaN or infinity is refused (every later output would be NaN)."""
        if self._float_range is None:
            low, high = extremes()
            if not (math.isfinite(low) and math.isfinite(high)):
                raise self._not_finite()
            self._float_range = 255.0 if high > 1.0 else 1.0
        return self._float_range

    def _not_finite(self) -> ValueError:
        return ValueError(f"frame {self.frame_index + 1} holds NaN or infinite values: float frames are 0-1 or "
                          f"0-255")

    def _mask_tensor(self, mask) -> torch.Tensor:
        """A given mask as the network's ids (objects numbered 1.. in order of first appearance; new ids are
        added to ``object_ids``), on the device. Masks come with the first frame and with frames that add
        objects, never on the per-frame path, so reading their ids on the host costs no frame a sync."""
        # a copy of an array (small, once per mask): torch warns about read-only ones (np.asarray of a PIL image)
        m = mask if isinstance(mask, torch.Tensor) else torch.tensor(np.ascontiguousarray(mask))
        if m.dtype == torch.bool:  # a boolean mask (SAM2-style): one object
            m = m.to(torch.uint8)
        if m.is_floating_point() or m.is_complex():
            raise ValueError(f"mask must hold integer object ids, got dtype {m.dtype}")
        if tuple(m.shape) != self.frame_size:
            raise ValueError(f"mask is {tuple(m.shape)} but the frames are {self.frame_size}")
        m = m.to(self.device).long()
        ids = torch.unique(m).tolist()
        bad = [i for i in ids if i < 0 or i > 255]
        if bad:
            raise ValueError(f"mask holds object id {bad[0]}: ids are 1-254 (0 background, 255 void)")
        if 255 in ids:
            m = m.masked_fill(m == 255, 0)
            if not self._warned_void:
                self._warned_void = True
                warnings.warn("mask holds id 255, DAVIS's void label: not tracked as an object", stacklevel=3)
        new = [i for i in ids if 0 < i < 255 and i not in self.object_ids]
        if new:
            self.object_ids += new
            given = torch.tensor([0, *self.object_ids])
            self._given_to_network = torch.zeros(256, dtype=torch.long).index_copy_(
                0, given, torch.arange(len(given))).to(self.device)
            same = self.object_ids == list(range(1, len(self.object_ids) + 1))
            self._network_to_given = None if same else given.to(self.device)
        return m if self._network_to_given is None else self._given_to_network[m]

    def _given_label(self, label: torch.Tensor) -> torch.Tensor:
        """Network ids -> the given ids."""
        return label if self._network_to_given is None else self._network_to_given[label]

    def _given_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """(H, W, 1 + n) probabilities in the network's order -> (H, W, 1 + max given id), channel = given id."""
        if self._network_to_given is None:
            return probs
        out = probs.new_zeros(*probs.shape[:2], max(self.object_ids) + 1)
        return out.index_copy_(2, self._network_to_given, probs)

    def _layout(self) -> FrameLayout:
        """This video's constants for the step's functions. Eagerly, a group's one-hot and logits hold its 1 + n
        used identities only (the ID bank skips the absent ones; resizing and the softmax touch fewer channels).
        Compiled, one group carries all 1 + max_objects identities (the absent ones' logits are masked to a
        probability of exactly 0), so that the object count never changes a compiled function's shapes; with
        more objects than the ID bank holds, each composition of groups compiles once."""
        sizes = self._compiled_group_sizes() if self.compile else tuple(self._group_sizes())
        return FrameLayout(self.input_size, self.frame_size, sizes, self.group_size if self.compile else None,
                           self.net.align_corners)

    def _reference(self, inputs: torch.Tensor, label: torch.Tensor, encoded: list | None = None) -> None:
        """Make ``label`` every group's reference; ``encoded``: the views' encodings when the step already has them."""
        sizes, layout = self._group_sizes(), self._layout()
        for v, trackers in enumerate(self.views):
            enc = encoded[v] if encoded is not None else self.step_functions.encode(inputs[v:v + 1])
            while len(trackers) < len(sizes):
                trackers.append(ObjectTracker(self.net, [0], self.long_term_gap, step=self.step_functions))
            for tracker, n, one_hot in zip(trackers, sizes, group_one_hots(label, layout, v == 1)):
                tracker.num_objects = [n]
                tracker.reference(enc, one_hot, frame_index=self.frame_index)

    # ---------------------------------------------------------------- API
    @torch.inference_mode()
    def add_objects(self, frame, mask) -> torch.Tensor:
        """Start the video (or restart its memory) from a frame with its object mask."""
        if self.num_objects:
            raise RuntimeError("objects already added; pass later masks to step(frame, mask)")
        self._flush_denormals()
        inputs = self._to_input(frame)
        label = self._mask_tensor(mask)
        self.num_objects = len(self.object_ids)
        if self.num_objects == 0:
            raise ValueError("the first mask holds no object" + (
                " (only 255, DAVIS's void label: for a 0/255 binary mask pass mask > 0)" if self._warned_void else ""))
        self.frame_index += 1
        with self._autocast():
            self._reference(inputs, label)
        return self._given_one_hot(label)

    @torch.inference_mode()
    def step(self, frame, mask=None) -> torch.Tensor:
        """Segment the next frame. ``mask`` (optional) holds objects that appear in this frame."""
        if not self.num_objects:
            if mask is None:
                raise RuntimeError("call add_objects(frame, mask) with the first mask before step()")
            return self.add_objects(frame, mask)
        self._flush_denormals()
        inputs = self._to_input(frame)
        new = self._mask_tensor(mask) if mask is not None else None
        self.frame_index += 1
        layout = self._layout()
        states = [[tracker.state(self.device) for tracker in trackers] for trackers in self.views]
        with self._autocast():
            if new is not None and int(new.max()) > 0:  # new objects: this frame becomes a reference
                _, label, encoded, _ = self.step_functions.predict(inputs, states, layout)
                label = torch.where(new > 0, new, label)
                self.num_objects = len(self.object_ids)
                self._reference(inputs, label, encoded)
                self.step_functions.memory_replaced()  # the old memory's CUDA graphs serve the new one
                return self._given_one_hot(label)
            probs, label, short_terms = self.step_functions.segment(inputs, states, layout)
            probs = probs[..., : self.num_objects + 1]
            for trackers, view_terms in zip(self.views, short_terms):
                for tracker, short_term in zip(trackers, view_terms):
                    tracker.store(short_term, frame_index=self.frame_index)
        self.last_mask = self._given_label(label)
        return self._given_probs(probs).permute(2, 0, 1)

    def _given_one_hot(self, label: torch.Tensor) -> torch.Tensor:
        """A reference frame's result: ``last_mask`` and its one-hot, in the given ids."""
        self.last_mask = self._given_label(label)
        return one_hot_mask(self.last_mask[None], max(self.object_ids))[0]

    @torch.inference_mode()
    def warm_up(self, frame_size: tuple[int, int], num_objects: int | tuple[int, ...] = 1) -> None:
        """With ``compile``: compile every step function (and record its CUDA graphs) for videos of this frame
        size before one is timed, on a throwaway session over random frames. Its long-term gap is 3 (the gap is
        no input of a compiled function): the frame with the reference alone in memory runs 3 times (frames
        1-3; compiled with CUDA graphs), the frame with a full memory 12 times and the memory write 4 times
        (frames 6, 9, 12, 15): each at least three times, enough for CUDA graphs to be recorded and replayed.
        ``num_objects``: the video's object count, or the counts it will have (objects that enter later):
        more objects than the ID bank holds make more groups, another compiled shape, rehearsed here too, and
        so are objects entering later in a group of their own (from one count to the next, at frame 7).
        Once per inference size, precision and group count (the compiled step is shared); nothing to do eagerly."""
        step = self.step_functions
        if not self.compile or not isinstance(step, CompiledFrameStep) or step.disabled:
            return
        h, w = frame_size
        size = inference_size(h, w, self.max_long_edge, self.max_short_edge, self.net.size_multiple)
        counts = (num_objects,) if isinstance(num_objects, int) else tuple(num_objects)
        counts = sorted({max(1, int(c)) for c in counts})
        # (what is compiled, objects from frame 0, objects entering at frame 7): each count, then each step up to
        # another group count (until the entering group's first memory write its memory is younger than the
        # first group's, a combination of memory sizes the all-at-once rehearsals never make)
        plans = [(self._compiled_group_sizes(count), count, 0) for count in counts]
        plans += [((self._compiled_group_sizes(before), self._compiled_group_sizes(after)), before, after - before)
                  for before, after in zip(counts, counts[1:])
                  if len(self._group_sizes(after)) != len(self._group_sizes(before))]
        for groups, count, entering in plans:
            key = (size, self.amp_dtype, self.flip, groups)
            if key in step.warmed:
                continue
            self._rehearse(step, h, w, count, entering)
            step.warmed.add(key)

    def _rehearse(self, step: CompiledFrameStep, h: int, w: int, count: int, entering: int = 0) -> None:
        """``warm_up``'s throwaway session: 16 random frames, ``count`` objects (side by side stripes), and
        ``entering`` more at frame 7 (below them), after the first memory is full (writes at frames 3 and 6)."""
        rehearsal = InferenceSession(self.net, long_term_gap=3, max_long_edge=self.max_long_edge,
                                     max_short_edge=self.max_short_edge, flip=self.flip, amp=self.amp,
                                     device=self.device)
        rehearsal.step_functions, rehearsal.compile = step.for_another_session(), True
        generator = torch.Generator(device=self.device).manual_seed(0)
        frames = torch.randint(0, 256, (16, h, w, 3), generator=generator, device=self.device, dtype=torch.uint8)
        mask = torch.zeros(h, w, dtype=torch.int64, device=self.device)
        columns = torch.arange(w, device=self.device) * count // w + 1  # objects 1..count across the width
        mask[h // 4: 3 * h // 4] = columns
        rehearsal.add_objects(frames[0], mask)
        later = None
        if entering:
            later = torch.zeros_like(mask)
            later[3 * h // 4:] = torch.arange(w, device=self.device) * entering // w + count + 1
        for t, frame in enumerate(frames[1:], start=1):
            rehearsal.step(frame, later if t == 7 else None)

    def memory_bytes(self) -> int:
        """Bytes of the long-term memory that every object group of every view reads (each storage once)."""
        storages: dict[int, int] = {}
        for view in self.views:
            for tracker in view:
                if tracker.memory is None:
                    continue
                for layer in tracker.memory.readout:
                    for tensor in layer:
                        storage = tensor.untyped_storage()
                        storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    @property
    def memory_slots(self) -> int:
        """Long-term memory slots of the first object group (2 for MAVOS, growing for DeAOT)."""
        return self.views[0][0].num_memory_slots if self.views[0] else 0
