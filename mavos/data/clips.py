"""Training clips from videos: the DeAOT/MAVOS sampling recipe plus clip-consistent augmentation.

A clip is ``clip_len`` frames in temporal order with random gaps of 1..max_gap between consecutive
frames, possibly reversed, possibly with a second video's objects pasted on top (merge). Only
objects visible in the clip's first frame are kept (the model is told about them there); ids are
made contiguous and optionally shuffled so the model cannot learn "object 1 is the big one".
Augmentation draws one set of random parameters per clip and applies it to every frame and mask.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mavos.data.io import read_frame, read_mask
from mavos.data.records import DatasetError, VideoRecord

VOID_ID = 255  # "don't care" pixels in DAVIS masks: kept in training masks, where the loss ignores them
_VOID_WHILE_MERGING = -1  # void while clips are relabelled and merged (ids may then pass 255)


@dataclass
class ClipConfig:
    """How training clips are cut and augmented (defaults: the MAVOS/DeAOT main-training recipe).

    short_edge: frames are resized so their short edge has this length times a random ``scale``
        (one resampling); None keeps the frame size and applies ``scale`` alone.
    crop_size: (height, width) of the output; smaller images are zero-padded (mask 0) first.
    min_object_pixels: an object needs this many pixels in the augmented first frame to be kept.
    """

    clip_len: int = 8
    crop_size: tuple[int, int] = (465, 465)
    max_objects: int = 10
    merge_prob: float = 0.3
    reverse_prob: float = 0.5
    shuffle_ids: bool = True
    short_edge: int | None = 480
    scale: tuple[float, float] = (0.7, 1.3)
    flip_prob: float = 0.5
    color_jitter: bool = True
    gray_prob: float = 0.2
    blur_prob: float = 0.3
    min_object_pixels: int = 10

    def __post_init__(self) -> None:
        # Hydra hands over ListConfig/list; keep plain tuples so the config pickles and compares simply.
        self.crop_size = tuple(int(v) for v in self.crop_size)  # type: ignore[assignment]
        self.scale = tuple(float(v) for v in self.scale)  # type: ignore[assignment]
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width) > 0, got {self.crop_size}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if self.clip_len < 1 or self.max_objects < 1:
            raise ValueError("clip_len and max_objects must be >= 1")

    @classmethod
    def from_any(cls, value: ClipConfig | dict | None) -> ClipConfig:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        data = dict(value)
        unknown = set(data) - known
        if unknown:
            raise TypeError(f"unknown ClipConfig fields: {sorted(unknown)}")
        return cls(**data)


class VideoReader(Protocol):
    name: str

    def videos(self) -> list[VideoRecord]: ...


def build_clip_transform(cfg: ClipConfig) -> A.Compose:
    """One albumentations pipeline for a whole clip: frame 0 is ``image``/``mask``, frame t is ``image{t}``/``mask{t}``.

    Passing all frames in one call makes albumentations draw the random parameters once. The crop
    is chosen around a foreground pixel of frame 0's mask, so the first frame keeps an object.
    """
    ch, cw = cfg.crop_size
    steps: list[Any] = []
    # Masks use INTER_NEAREST_EXACT: it samples pixel centres like INTER_LINEAR does for the image;
    # plain INTER_NEAREST shifts masks against their frames by up to a pixel per resize.
    nearest = cv2.INTER_NEAREST_EXACT
    lo, hi = cfg.scale
    if cfg.short_edge:
        # resize and random scale in one resampling: a random short edge in short_edge * [lo, hi]
        sizes = list(range(max(1, round(cfg.short_edge * lo)), max(1, round(cfg.short_edge * hi)) + 1))
        steps.append(A.SmallestMaxSize(max_size=sizes, interpolation=cv2.INTER_LINEAR, mask_interpolation=nearest))
    elif (lo, hi) != (1.0, 1.0):
        steps.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=nearest, p=1.0))
    steps += [
        A.PadIfNeeded(min_height=ch, min_width=cw, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
        A.CropNonEmptyMaskIfExists(height=ch, width=cw),
        A.HorizontalFlip(p=cfg.flip_prob),
    ]
    if cfg.color_jitter:
        steps.append(A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.03, p=0.8))
    if cfg.gray_prob > 0:
        steps.append(A.ToGray(p=cfg.gray_prob))
    if cfg.blur_prob > 0:
        steps.append(A.GaussianBlur(sigma_limit=(0.1, 2.0), p=cfg.blur_prob))
    targets = {}
    for t in range(1, cfg.clip_len):
        targets[f"image{t}"] = "image"
        targets[f"mask{t}"] = "mask"
    return A.Compose(steps, additional_targets=targets, mask_interpolation=nearest)


def sample_clip_positions(num_frames: int, clip_len: int, max_gap: int, reverse_prob: float,
                          rng: np.random.Generator) -> list[int]:
    """Positions of a clip in a video of ``num_frames``: increasing, consecutive gaps in 1..max_gap.

    The largest gap is lowered so that the clip fits the video; a video shorter than the clip
    repeats frames (gap 0). With probability ``reverse_prob`` the clip runs backwards.
    """
    if num_frames < 1:
        raise ValueError("empty video")
    if num_frames < clip_len:
        positions = np.sort(np.concatenate([np.arange(num_frames), rng.integers(0, num_frames, clip_len - num_frames)]))
    elif clip_len == 1:
        positions = rng.integers(0, num_frames, 1)
    else:
        gap = max(1, min(int(max_gap), (num_frames - 1) // (clip_len - 1)))
        steps = rng.integers(1, gap + 1, clip_len - 1)
        start = int(rng.integers(0, num_frames - int(steps.sum())))
        positions = start + np.concatenate([[0], np.cumsum(steps)])
    out = [int(p) for p in positions]
    if rng.uniform() < reverse_prob:
        out.reverse()
    return out


def _anchored_positions(num_frames: int, anchor: int, clip_len: int, max_gap: int, reverse_prob: float,
                        rng: np.random.Generator) -> list[int]:
    """A clip whose first frame is ``anchor``: runs forward or backward (whichever fits), clamped to the video."""
    rel = sample_clip_positions(num_frames, clip_len, max_gap, 0.0, rng)
    offsets = np.array(rel) - rel[0]
    backward = rng.uniform() < reverse_prob
    for direction in ((-1, 1) if backward else (1, -1)):
        positions = anchor + direction * offsets
        if positions.min() >= 0 and positions.max() < num_frames:
            break
    positions = np.clip(positions, 0, num_frames - 1)
    return [int(p) for p in positions]


def _has_object(mask: np.ndarray) -> bool:
    return bool(np.any((mask != 0) & (mask != VOID_ID)))


def _compact(mask: np.ndarray, offset: int = 0) -> tuple[np.ndarray, int]:
    """Relabel the objects of a clip's masks to offset+1..offset+n (void -> -1); return (masks, n)."""
    ids = [int(v) for v in np.unique(mask) if v != 0 and v != VOID_ID]
    lut = np.zeros(256, np.int64)
    lut[VOID_ID] = _VOID_WHILE_MERGING
    for k, v in enumerate(ids, start=1):
        lut[v] = offset + k
    return lut[mask], len(ids)


class ClipDataset(Dataset):
    """Map-style dataset of random training clips: item i comes from video ``i % len(videos)``.

    Only annotated frames are sampled (gaps count annotated frames), so sparsely annotated training
    videos (e.g. YouTube-VOS train, every 5th frame) work as they are.

    Randomness comes from torch's generator (so DataLoader workers differ and ``seed_everything``
    reproduces runs); each item seeds its own numpy generator and the albumentations pipeline from it.
    """

    def __init__(self, videos: list[VideoRecord], cfg: ClipConfig, *, max_gap: int = 3, repeat: int = 1,
                 name: str = "clips", max_tries: int = 10) -> None:
        if not videos:
            raise DatasetError(f"{name}: no videos to sample training clips from")
        streamed = [v.video_file for v in videos if v.video_file is not None]
        if streamed:
            raise DatasetError(f"{streamed[0]}: a video file is read in order, but training samples clips of frames "
                               f"at random; train on its frames as a folder (data=frames) instead")
        self.videos = [v for v in videos if v.annotations]
        if not self.videos:
            raise DatasetError(f"{name}: none of its videos has annotations")
        self.cfg = cfg
        self.max_gap = int(max_gap)
        self.repeat = int(repeat)
        self.name = name
        self.max_tries = int(max_tries)
        self._transform: A.Compose | None = None
        self._object_positions: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.videos) * self.repeat

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_transform"] = None  # rebuilt lazily in each worker
        return state

    @property
    def transform(self) -> A.Compose:
        if self._transform is None:
            self._transform = build_clip_transform(self.cfg)
        return self._transform

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        video = self.videos[index % len(self.videos)]
        for attempt in range(self.max_tries):
            if attempt >= self.max_tries // 2 and len(self.videos) > 1:
                video = self.videos[int(rng.integers(len(self.videos)))]  # this one keeps failing: try another
            sample = self._try_clip(video, rng)
            if sample is not None:
                return sample
        raise DatasetError(
            f"{self.name}: {self.max_tries} attempts found no clip of video {video.name!r} whose first frame "
            f"keeps an object of >= {self.cfg.min_object_pixels} pixels after augmentation"
        )

    # -------------------------------------------------------------------------------- sampling
    def _positions_with_objects(self, video: VideoRecord) -> list[int]:
        """Positions (in the annotated-frame list) whose mask holds an object; read once per worker."""
        if video.name not in self._object_positions:
            annotated = sorted(video.annotations)
            self._object_positions[video.name] = [
                p for p, i in enumerate(annotated) if _has_object(read_mask(video.annotations[i]))
            ]
        return self._object_positions[video.name]

    def _load(self, video: VideoRecord, rng: np.random.Generator, need_object: bool
              ) -> tuple[list[np.ndarray], np.ndarray] | None:
        """Frames and masks of one clip; None if ``need_object`` and no clip starting on an object is found.

        A few random clips are tried; then the clip is anchored on a frame known to show an object.
        """
        annotated = sorted(video.annotations)
        first = None
        for _ in range(3 if need_object else 1):
            positions = sample_clip_positions(len(annotated), self.cfg.clip_len, self.max_gap, self.cfg.reverse_prob, rng)
            first = read_mask(video.annotations[annotated[positions[0]]])
            if not need_object or _has_object(first):
                break
        else:
            candidates = self._positions_with_objects(video)
            if not candidates:
                return None
            anchor = candidates[int(rng.integers(len(candidates)))]
            positions = _anchored_positions(len(annotated), anchor, self.cfg.clip_len, self.max_gap,
                                            self.cfg.reverse_prob, rng)
            first = read_mask(video.annotations[annotated[positions[0]]])
        indices = [annotated[p] for p in positions]
        masks = [first] + [read_mask(video.annotations[i]) for i in indices[1:]]
        frames = [read_frame(video.frames[i]) for i in indices]
        for i, f, m in zip(indices, frames, masks):
            if f.shape[:2] != m.shape:
                raise DatasetError(f"{video.annotations[i]}: mask size {m.shape} differs from frame {video.frames[i]} "
                                   f"size {f.shape[:2]}")
        return frames, np.stack(masks)

    def _try_clip(self, video: VideoRecord, rng: np.random.Generator) -> dict[str, Any] | None:
        loaded = self._load(video, rng, need_object=True)
        if loaded is None:
            return None
        frames, masks = loaded
        masks, count = _compact(masks)
        if self.cfg.merge_prob > 0 and len(self.videos) > 1 and rng.uniform() < self.cfg.merge_prob:
            others = [v for v in self.videos if v is not video] or self.videos
            other = others[int(rng.integers(len(others)))]
            extra = self._load(other, rng, need_object=False)
            if extra is not None:
                frames, masks = _paste(frames, masks, *extra, offset=count)
        return self._augment(frames, masks, video.name, rng)

    def _augment(self, frames: list[np.ndarray], masks: np.ndarray, name: str, rng: np.random.Generator
                 ) -> dict[str, Any] | None:
        masks = np.where(masks >= VOID_ID, 0, masks)  # more objects than a uint8 holds: drop the excess
        masks = np.where(masks == _VOID_WHILE_MERGING, VOID_ID, masks).astype(np.uint8)
        self.transform.set_random_seed(int(rng.integers(0, 2**31 - 1)))
        data: dict[str, np.ndarray] = {"image": frames[0], "mask": masks[0]}
        for t in range(1, len(frames)):
            data[f"image{t}"] = frames[t]
            data[f"mask{t}"] = masks[t]
        out = self.transform(**data)
        frames_out = np.stack([out["image"]] + [out[f"image{t}"] for t in range(1, len(frames))])
        masks_out = np.stack([out["mask"]] + [out[f"mask{t}"] for t in range(1, len(frames))])

        counts = np.bincount(masks_out[0].ravel(), minlength=256)
        kept = [i for i in range(1, VOID_ID) if counts[i] >= max(1, self.cfg.min_object_pixels)]
        if not kept:
            return None
        if len(kept) > self.cfg.max_objects:
            kept = sorted(rng.choice(kept, self.cfg.max_objects, replace=False).tolist())
        new_ids = rng.permutation(len(kept)) + 1 if self.cfg.shuffle_ids else np.arange(1, len(kept) + 1)
        lut = np.zeros(256, np.int64)
        lut[kept] = new_ids
        lut[VOID_ID] = VOID_ID  # the loss ignores void; memory masks read it as background
        return {
            "frames": torch.from_numpy(frames_out).permute(0, 3, 1, 2).float().div_(255.0),
            "masks": torch.from_numpy(lut[masks_out]),
            "num_objects": torch.tensor(len(kept), dtype=torch.int64),
            "name": name,
        }


def _paste(frames: list[np.ndarray], masks: np.ndarray, frames2: list[np.ndarray], masks2: np.ndarray,
           offset: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Paste clip 2's objects over clip 1 (resized to clip 1's size); clip 2's ids follow clip 1's."""
    h, w = masks.shape[1:]
    masks2, _ = _compact(masks2, offset)
    out_frames, out_masks = [], masks.copy()
    for t, (f1, f2, m2) in enumerate(zip(frames, frames2, masks2)):
        if f2.shape[:2] != (h, w):
            f2 = cv2.resize(f2, (w, h), interpolation=cv2.INTER_LINEAR)
            m2 = cv2.resize(m2.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST_EXACT).astype(np.int64)
        fg = m2 > 0
        f1 = f1.copy()
        f1[fg] = f2[fg]
        out_masks[t][fg] = m2[fg]
        out_frames.append(f1)
    return out_frames, out_masks


class VideoTrainSet:
    """Training clips from the videos of one reader (e.g. DAVIS 2017 train repeated 5 times).

    The reader is asked for its videos only in :meth:`dataset`, i.e. after ``prepare_data`` ran.
    """

    def __init__(self, reader: VideoReader, repeat: int = 1, max_gap: int = 3) -> None:
        if repeat < 1 or max_gap < 1:
            raise ValueError("repeat and max_gap must be >= 1")
        self.reader = reader
        self.repeat = int(repeat)
        self.max_gap = int(max_gap)

    def __repr__(self) -> str:
        return f"VideoTrainSet({self.reader!r}, repeat={self.repeat}, max_gap={self.max_gap})"

    def dataset(self, cfg: ClipConfig | dict | None = None) -> ClipDataset:
        cfg = ClipConfig.from_any(cfg)
        return ClipDataset(self.reader.videos(), cfg, max_gap=self.max_gap, repeat=self.repeat,
                           name=getattr(self.reader, "name", type(self.reader).__name__))


__all__ = ["ClipConfig", "ClipDataset", "VideoTrainSet", "build_clip_transform", "sample_clip_positions"]
