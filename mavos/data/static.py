"""Static images with masks turned into short training clips (the PRE stage of DeAOT/MAVOS).

Layout (aot-benchmark / MAVOS ``Static/``): ``JPEGImages/<source>/<stem>.{jpg,png}`` with
``Annotations/<source>/<stem>.png`` for the sources COCO, ECSSD, MSRA10K, PASCAL-S and PASCALVOC2012;
a source folder that is absent is skipped, an image without its mask is an error.

A clip is ``clip_len`` random views of one image: frame 0 gets colour jitter and a random resized
crop; later frames also get a horizontal flip and a random affine (rotation 20 deg, shear 10 deg), so
the network learns to follow objects through deformation. Grey and blur as in the official ``v2``
augmentation. With probability ``merge_prob`` the objects of a second clip are pasted over the first.
The knobs come from :class:`~mavos.data.clips.ClipConfig` (``flip_prob`` flips the whole clip,
``min_object_pixels`` decides what counts as visible in frame 0); its video-only fields (short_edge,
scale, reverse_prob) do not apply to single images.

Mask convention: palette ("P") PNGs hold instance ids (255 = void, becomes background); any other mode
is a saliency mask (ECSSD, MSRA10K, PASCAL-S are 0/255 greyscale): pixels >= 128 are the one object,
unless the whole mask is below 128, in which case its values are taken as ids.
"""
from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mavos.data.clips import ClipConfig
from mavos.data.io import read_frame
from mavos.data.listing import FRAME_EXTENSIONS, list_files, missing_root
from mavos.data.records import DatasetError

STATIC_SOURCES: tuple[str, ...] = ("COCO", "ECSSD", "MSRA10K", "PASCAL-S", "PASCALVOC2012")
VOID_ID = 255
FILL_COLOUR = (124, 116, 104)  # ImageNet mean in 0..255, the official affine fill

_TREE = """\
Static/                        <- root
  JPEGImages/
    COCO/ ECSSD/ MSRA10K/ PASCAL-S/ PASCALVOC2012/     <stem>.jpg (or .png)
  Annotations/
    COCO/ ECSSD/ MSRA10K/ PASCAL-S/ PASCALVOC2012/     <stem>.png (same stems)"""


def read_static_mask(path: str | Path) -> np.ndarray:
    """(H, W) uint8 object ids of a static-image mask (see the module docstring for the rule)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode == "P":
                ids = np.array(img, dtype=np.uint8)
                ids[ids == VOID_ID] = 0
                return ids
            grey = np.array(img.convert("L"), dtype=np.uint8)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: mask does not exist") from e
    except Exception as e:
        raise DatasetError(f"{path}: cannot read mask ({e})") from e
    if grey.max(initial=0) >= 128:
        return (grey >= 128).astype(np.uint8)
    return grey


def _crop_hw(crop_size) -> tuple[int, int]:
    if isinstance(crop_size, int):
        return crop_size, crop_size
    h, w = crop_size
    return int(h), int(w)


class StaticTrainSet:
    """The static-image pre-training set; :meth:`dataset` turns it into a torch Dataset of clips.

    repeat: how many times each image is listed per epoch. sources: sub-folders to use.
    """

    def __init__(self, root: str | Path, repeat: int = 1, sources: tuple[str, ...] | list[str] = STATIC_SOURCES):
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.root = Path(root)
        self.repeat = repeat
        self.sources = tuple(sources)
        self.name = "static"

    def pairs(self) -> list[tuple[Path, Path]]:
        """(image, mask) pairs of every present source, matched by file stem."""
        if not (self.root / "JPEGImages").is_dir():
            raise missing_root("Static image set", self.root, _TREE, "data/Static")
        pairs: list[tuple[Path, Path]] = []
        for source in self.sources:
            image_dir = self.root / "JPEGImages" / source
            if not image_dir.is_dir():
                continue
            mask_dir = self.root / "Annotations" / source
            for image in list_files(image_dir, FRAME_EXTENSIONS, f"static images of {source}"):
                mask = mask_dir / f"{image.stem}.png"
                if not mask.is_file():
                    raise DatasetError(f"{image}: image has no mask {mask}")
                pairs.append((image, mask))
        if not pairs:
            raise DatasetError(
                f"{self.root}: no images in any of JPEGImages/{{{','.join(self.sources)}}}. Expected layout:\n{_TREE}"
            )
        return pairs

    def __repr__(self) -> str:
        return f"StaticTrainSet(root={str(self.root)!r}, repeat={self.repeat}, sources={self.sources})"

    def dataset(self, cfg: ClipConfig | dict | None = None) -> "StaticClipDataset":
        """A Dataset of clips shaped by ``cfg`` (a ClipConfig or its fields as a dict)."""
        return StaticClipDataset(self.pairs(), ClipConfig.from_any(cfg), self.repeat)


class StaticClipDataset(Dataset):
    """Yields ``frames`` (T, 3, H, W) float32 in [0, 1], ``masks`` (T, H, W) int64 ids 0..K,
    ``num_objects`` int64 scalar and ``name``; every object is visible in frame 0 (at least
    ``cfg.min_object_pixels`` pixels, relaxed to one pixel when no view of the image keeps an
    object that large).

    Randomness comes from torch's generator (one draw per clip seeds albumentations and numpy), so
    ``torch.manual_seed`` / the DataLoader's per-worker seeding make clips reproducible and distinct
    across workers.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], cfg: ClipConfig, repeat: int = 1):
        self.pairs = pairs
        self.repeat = repeat
        self.clip_len = int(cfg.clip_len)
        self.crop_hw = _crop_hw(cfg.crop_size)
        self.max_objects = int(cfg.max_objects)
        self.merge_prob = float(cfg.merge_prob)
        self.shuffle_ids = bool(cfg.shuffle_ids)
        self.flip_prob = float(cfg.flip_prob)
        self.min_object_pixels = max(1, int(cfg.min_object_pixels))
        if self.clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {self.clip_len}")
        h, w = self.crop_hw
        photometric = lambda: _photometric(cfg.color_jitter, cfg.gray_prob, cfg.blur_prob)  # noqa: E731
        self.first_view = A.Compose([_random_crop(h, w), *photometric()])
        self.later_view = A.Compose([
            A.HorizontalFlip(p=0.3),
            A.Affine(rotate=(-20, 20), shear=(-10, 10), translate_percent=(-0.1, 0.1), scale=(0.9, 1.1),
                     interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST,
                     fill=FILL_COLOUR, fill_mask=0, p=1.0),
            _random_crop(h, w),
            *photometric(),
        ])
        self.plain_view = A.Compose([A.Resize(h, w, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST)])

    def __len__(self) -> int:
        return len(self.pairs) * self.repeat

    def _views(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """clip_len augmented views (T, H, W, 3) uint8 / (T, H, W) uint8 of one image, and the ids
        visible in frame 0 (in id order)."""
        image_path, mask_path = self.pairs[index]
        image, mask = read_frame(image_path), read_static_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        if not mask.any():
            raise DatasetError(f"{mask_path}: mask holds no object")
        if rng.random() < self.flip_prob:
            image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        for view in (self.first_view, self.later_view):
            view.set_random_seed(int(rng.integers(2**31)))

        first, visible = None, []
        for _ in range(10):
            first = self.first_view(image=image, mask=mask)
            visible = _visible_ids(first["mask"], self.min_object_pixels)
            if visible:
                break
        if not visible:
            first = self.plain_view(image=image, mask=mask)
            visible = _visible_ids(first["mask"], 1)
        if not visible:
            raise DatasetError(f"{mask_path}: no object survives resizing to {self.crop_hw} (objects too small)")
        views = [first] + [self.later_view(image=image, mask=mask) for _ in range(self.clip_len - 1)]
        return np.stack([v["image"] for v in views]), np.stack([v["mask"] for v in views]), visible

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        index = index % len(self.pairs)
        frames, masks, visible = self._views(index, rng)
        masks = masks.astype(np.int64)
        if len(self.pairs) > 1 and rng.random() < self.merge_prob:
            other = int(rng.integers(len(self.pairs) - 1))
            other += other >= index  # any image but this one
            frames, masks, visible = self._merge(frames, masks, *self._views(other, rng))
        masks, count = self._relabel(masks, visible, rng)
        image_path = self.pairs[index][0]
        return {
            "frames": torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0),
            "masks": torch.from_numpy(masks),
            "num_objects": torch.tensor(count, dtype=torch.int64),
            "name": f"{image_path.parent.name}/{image_path.stem}",
        }

    def _merge(self, frames, masks, frames2, masks2, visible2) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Paste clip 2's objects over clip 1 (ids of clip 2 shifted past 255 so they never collide)."""
        offset = 256
        fg = masks2 > 0
        merged_frames = np.where(fg[..., None], frames2, frames)
        merged_masks = np.where(fg, masks2.astype(np.int64) + offset, masks)
        visible = _visible_ids(merged_masks[0], self.min_object_pixels)
        if not visible:  # the paste covered everything that was visible: keep what shows at all
            visible = _visible_ids(merged_masks[0], 1)
        return merged_frames, merged_masks, visible

    def _relabel(self, masks: np.ndarray, visible: list[int], rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Keep at most max_objects of the frame-0 objects (a random subset when shuffling), renumber
        them 1..K (in random order when shuffle_ids) and send every other id to background."""
        order = list(visible)
        if self.shuffle_ids:
            rng.shuffle(order)
        kept = order[: self.max_objects]
        if not self.shuffle_ids:
            kept = sorted(kept)
        out = np.zeros_like(masks)
        for new_id, old_id in enumerate(kept, start=1):
            out[masks == old_id] = new_id
        return out, len(kept)


def _random_crop(h: int, w: int) -> A.RandomResizedCrop:
    """80-100% of the image area, aspect within 3/4..4/3 of the crop's, resized to (h, w)."""
    ratio = w / h
    return A.RandomResizedCrop(size=(h, w), scale=(0.8, 1.0), ratio=(ratio * 3 / 4, ratio * 4 / 3),
                               interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST, p=1.0)


def _photometric(color_jitter: bool, gray_prob: float, blur_prob: float) -> list[A.BasicTransform]:
    """Colour jitter, grey and blur of the official "v2" static augmentation (image only)."""
    steps: list[A.BasicTransform] = []
    if color_jitter:
        steps.append(A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8))
    if gray_prob > 0:
        steps.append(A.ToGray(p=gray_prob))
    if blur_prob > 0:
        steps.append(A.GaussianBlur(sigma_limit=(0.1, 2.0), p=blur_prob))
    return steps


def _visible_ids(mask: np.ndarray, min_pixels: int) -> list[int]:
    ids, counts = np.unique(mask, return_counts=True)
    return [int(i) for i, c in zip(ids, counts) if i != 0 and c >= min_pixels]
