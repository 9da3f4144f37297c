"""Reading frames and palette masks, writing palette masks atomically: the one place for image I/O."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from mavos.data.records import DatasetError

# The DAVIS palette: index i -> colour of object i (the classic VOC/DAVIS bit-interleaved palette).
def davis_palette() -> np.ndarray:
    """Return the (256, 3) uint8 DAVIS/VOC colour palette."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


_PALETTE = davis_palette()
TEMP_PREFIX = "."  # temporary files of atomic_save: .<name>.<pid>-<token>.tmp<suffix>


def read_frame(path: str | Path) -> np.ndarray:
    """Read an RGB frame as (H, W, 3) uint8; a clear error names an unreadable file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: frame image does not exist") from e
    except Exception as e:  # PIL raises several types for corrupt files
        raise DatasetError(f"{path}: cannot read image ({e})") from e


def read_mask(path: str | Path) -> np.ndarray:
    """Read an annotation PNG as (H, W) uint8 object ids.

    Palette ("P") and greyscale ("L") PNGs hold ids directly; an RGB PNG is mapped back through the
    DAVIS palette (some tools save colour masks), and a colour outside the palette is an error.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "L", "I", "I;16"):
                return np.asarray(img, dtype=np.uint8) if img.mode in ("P", "L") else np.asarray(img).astype(np.uint8)
            rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: annotation does not exist") from e
    except Exception as e:
        raise DatasetError(f"{path}: cannot read annotation ({e})") from e
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pal = _PALETTE.astype(np.int64)
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(c): i for i, c in reversed(list(enumerate(pal_code)))}
    uniq, inv = np.unique(code, return_inverse=True)
    ids = np.empty(len(uniq), dtype=np.uint8)
    for k, c in enumerate(uniq):
        if int(c) not in lut:
            raise DatasetError(f"{path}: RGB colour {tuple(int(v) for v in rgb.reshape(-1, 3)[inv.ravel() == k][0])} is not in the DAVIS palette")
        ids[k] = lut[int(c)]
    return ids[inv].reshape(code.shape)


def read_user_mask(path: str | Path) -> np.ndarray:
    """A mask a person made for their own video: object ids, with binary masks read as one object.

    Palette PNGs hold ids (255 = void, as in DAVIS). A greyscale / RGB mask whose only values are 0 and 255 (the
    most common kind: a binary mask from an editor or a segmentation tool) is object 1 where it is 255; so is one
    that is black and white but for soft (anti-aliased) edges or JPEG noise, thresholded at 128.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            palette = img.mode == "P"
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: mask does not exist") from e
    except Exception as e:
        raise DatasetError(f"{path}: cannot read mask ({e})") from e
    if not palette:
        try:
            with Image.open(path) as img:
                grey = np.asarray(img.convert("L"), dtype=np.uint8)
        except Exception as e:
            raise DatasetError(f"{path}: cannot read mask ({e})") from e
        if _black_and_white(grey):
            return (grey >= 128).astype(np.uint8)
    return read_mask(path)


def _black_and_white(grey: np.ndarray) -> bool:
    """Whether a greyscale mask is a binary one: only 0 and 255, or nearly all pixels near 0 or 255 with the
    rest edge greys that reach above 127 (an id mask's small ids, 1, 2, ..., beside 255 = void, never do)."""
    values = np.unique(grey)
    if not values.size or values[-1] != 255:
        return False
    if set(values.tolist()) <= {0, 255}:
        return True
    near_ends = np.count_nonzero((grey <= 16) | (grey >= 239)) / grey.size
    return near_ends >= 0.9 and bool(((values >= 128) & (values < 255)).any())


def read_any_mask(path: str | Path, user_masks: bool) -> np.ndarray:
    """A dataset's annotation (``read_mask``), or with ``user_masks`` a person's own (``read_user_mask``)."""
    return read_user_mask(path) if user_masks else read_mask(path)


def is_binary_mask_file(path: str | Path) -> bool:
    """Whether ``read_user_mask`` reads ``path`` as a 0/255 binary mask (one object)."""
    with Image.open(path) as img:
        if img.mode == "P":
            return False
        return _black_and_white(np.asarray(img.convert("L"), dtype=np.uint8))


def atomic_save(save_fn, path: str | Path) -> None:
    """Write through ``save_fn(tmp_path)`` then rename, so a crash never leaves a half-written file.

    The temporary file lives beside the destination (same file system, so the rename is atomic, and a killed
    writer leaves nothing in the system temp folder) and is created with the user's umask, like any file.
    Its name starts with a dot and keeps the destination's suffix (writers pick formats by suffix).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}"
    try:
        save_fn(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed ``atomic_save`` left in ``folder`` (call before a run writes there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f"{TEMP_PREFIX}*.tmp*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write (H, W) integer object ids as a DAVIS-palette PNG, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: object ids must be in 0..255")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE.ravel().tolist())
    atomic_save(lambda tmp: img.save(tmp, format="PNG"), path)


def write_frame(path: str | Path, frame: np.ndarray, quality: int = 95) -> None:
    """Write an (H, W, 3) uint8 RGB frame as JPEG, atomically."""
    img = Image.fromarray(np.asarray(frame, dtype=np.uint8), mode="RGB")
    atomic_save(lambda tmp: img.save(tmp, format="JPEG", quality=quality), path)
