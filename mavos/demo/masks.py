"""The first-frame mask a user makes in the page: painted strokes, an uploaded PNG, GrabCut from a box.

One rule ties the page together: a colour is an object id, through the DAVIS palette that our result PNGs
use (object k is palette colour k, background is black, colour 0). The page keeps a *base* mask (from an
uploaded PNG, a benchmark annotation or GrabCut) and shows it under the brush; strokes painted on top set
the pixels they cover to their colour's id (black strokes erase objects). ``apply_strokes`` turns the
editor's layers into the final mask.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mavos.data.io import davis_palette, read_user_mask
from mavos.data.records import DatasetError
from mavos.demo.videos import InputError
from mavos.evaluation.overlay import blend

PALETTE = davis_palette()
BRUSH_OBJECTS = 20           # object colours offered by the brush (uploaded masks may hold up to 254 objects)
_PAINTED_ALPHA = 128         # a layer pixel at least this opaque is painted
_COLOUR_TOLERANCE = 12       # per channel; palette colours are >= 32 apart on some channel
_VOID = 255                  # DAVIS's "don't care" id, never an object


def brush_colours(objects: int = BRUSH_OBJECTS) -> list[str]:
    """Brush colours in CSS: background (black) first, then objects 1..objects."""
    return [f"rgb({r}, {g}, {b})" for r, g, b in PALETTE[: objects + 1].tolist()]


def colours_to_ids(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) painted colours -> (N,) palette ids; a colour that is no palette colour is an InputError."""
    rgb = np.asarray(rgb, dtype=np.int64).reshape(-1, 3)
    unique, inverse = np.unique(rgb, axis=0, return_inverse=True)
    candidates = PALETTE[:_VOID].astype(np.int64)
    distance = np.abs(unique[:, None, :] - candidates[None, :, :]).max(axis=2)
    nearest = distance.argmin(axis=1)
    bad = distance[np.arange(len(unique)), nearest] > _COLOUR_TOLERANCE
    if bad.any():
        raise InputError(f"painted colour rgb{tuple(unique[bad][0].tolist())} is not an object colour; paint with "
                         f"the brush's colours (colour k is object k, black is background)")
    return nearest[inverse.ravel()].astype(np.uint8)


def apply_strokes(base: np.ndarray | None, layers: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The base mask (or an empty one) with the editor's RGBA layers painted over it, later layers on top."""
    mask = np.zeros(size, np.uint8) if base is None else np.array(base, dtype=np.uint8)
    if mask.shape != tuple(size):
        raise InputError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the video is {size[1]}x{size[0]}")
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            raise InputError("the painted layer has no transparency; paint with the brush")
        if layer.shape[:2] != tuple(size):
            raise InputError(f"the painted layer is {layer.shape[1]}x{layer.shape[0]} but the video is "
                             f"{size[1]}x{size[0]}; load the video again and repaint")
        painted = layer[..., 3] >= _PAINTED_ALPHA
        if painted.any():
            mask[painted] = colours_to_ids(layer[painted][:, :3])
    return mask


def read_uploaded_mask(path: str | Path, size: tuple[int, int], name: str | None = None) -> np.ndarray:
    """A palette PNG (ids) or a 0/255 binary mask (object 1) of the video's size, as (H, W) uint8 ids."""
    name = name or Path(path).name
    try:
        mask = read_user_mask(path)
    except DatasetError as e:
        raise InputError(f"{name} is not a mask this demo can read (a palette PNG of object ids, or a black/white "
                         f"PNG for one object): {str(e).replace(str(path), name)}") from e
    if mask.shape != tuple(size):
        raise InputError(f"{name} is {mask.shape[1]}x{mask.shape[0]} but the video is {size[1]}x{size[0]}; "
                         f"the mask must have the first frame's size")
    mask = mask.copy()
    mask[mask == _VOID] = 0
    return mask


def grabcut(frame: np.ndarray, box: tuple[int, int, int, int], iterations: int = 5) -> np.ndarray:
    """(H, W) bool: the object OpenCV's GrabCut finds inside box (x0, y0, x1, y1: two opposite corners)."""
    h, w = frame.shape[:2]
    x0, x1 = sorted((int(box[0]), int(box[2])))
    y0, y1 = sorted((int(box[1]), int(box[3])))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise InputError("the box is too small: click two opposite corners at least 5 pixels apart")
    if x0 == 0 and y0 == 0 and x1 == w - 1 and y1 == h - 1:
        raise InputError("the box covers the whole frame; GrabCut needs some background outside the box")
    labels = np.zeros((h, w), np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, labels, (x0, y0, x1 - x0 + 1, y1 - y0 + 1), background, foreground, iterations,
                cv2.GC_INIT_WITH_RECT)
    region = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if not region.any():
        raise InputError("GrabCut found no object in the box; draw the box tighter around the object, or paint it")
    return region


def add_object(mask: np.ndarray, region: np.ndarray, object_id: int) -> np.ndarray:
    """The mask with ``region`` set to ``object_id`` (over whatever was there)."""
    if not 1 <= int(object_id) < _VOID:
        raise InputError(f"object number {object_id}: choose 1..{_VOID - 1}")
    out = np.array(mask, dtype=np.uint8)
    out[region] = int(object_id)
    return out


def object_ids(mask: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(mask) if 0 < v < _VOID]


def check_first_mask(mask: np.ndarray | None, group_size: int) -> str:
    """What the run will do with the mask, in a sentence; an InputError when it holds no object."""
    ids = [] if mask is None else object_ids(mask)
    if not ids:
        raise InputError("the first-frame mask holds no object: paint at least one object (a brush colour other "
                         "than black), upload a mask PNG, or use GrabCut with a box")
    note = f"{len(ids)} object{'s' if len(ids) > 1 else ''} (ids {', '.join(map(str, ids))})"
    if max(ids) > group_size:
        groups = -(-max(ids) // group_size)
        note += (f": more than the ID bank's {group_size}, so they run in {groups} groups of up to {group_size} "
                 f"(merged per frame, as evaluation does; about {groups}x slower)")
    return note


def mask_preview(frame: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The frame with the mask's objects coloured and outlined (what the brush paints over)."""
    return frame if mask is None or not mask.any() else blend(frame, mask)
