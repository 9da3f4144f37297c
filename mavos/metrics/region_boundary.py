"""Region similarity J and boundary accuracy F of binary masks, as the DAVIS 2017 toolkit defines them.

Both accept one mask ``(H, W)`` (returning a float) or a stack ``(..., H, W)`` (returning an array of
the leading shape), as numpy arrays or torch tensors. Numbers match ``davis2017-evaluation``'s
``db_eval_iou`` / ``db_eval_boundary`` (checked against the toolkit itself, see tests).
"""
from __future__ import annotations

import math
import sys

import cv2
import numpy as np

DEFAULT_BOUND_TH = 0.008  # DAVIS: tolerance = 0.8% of the image diagonal (8 px at 480x854)


def as_bool_array(mask) -> np.ndarray:
    """A numpy bool view of a numpy array or torch tensor (any device); nonzero means foreground. Torch is not
    imported here (a tensor means it is loaded already): the writer process of evaluation runs without it."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool, copy=False)


def _check_shapes(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if pred.ndim < 2:
        raise ValueError(f"masks must be (..., H, W), got shape {pred.shape}")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void mask shape {void.shape} differs from ground-truth shape {gt.shape}")


def _scalar_or_array(values: np.ndarray) -> float | np.ndarray:
    return float(values) if values.ndim == 0 else values


def region_similarity(pred, gt, void=None) -> float | np.ndarray:
    """J = |pred & gt| / |pred | gt| over non-void pixels; 1 where both masks are empty."""
    pred, gt = as_bool_array(pred), as_bool_array(gt)
    void = None if void is None else as_bool_array(void)
    _check_shapes(pred, gt, void)
    inter = pred & gt
    union = pred | gt
    if void is not None:
        inter &= ~void
        union &= ~void
    n_inter = inter.sum(axis=(-2, -1), dtype=np.int64)
    n_union = union.sum(axis=(-2, -1), dtype=np.int64)
    j = np.where(n_union == 0, 1.0, n_inter / np.maximum(n_union, 1))
    return _scalar_or_array(np.asarray(j, dtype=np.float64))


def boundary_map(mask) -> np.ndarray:
    """One-pixel boundaries of binary masks ``(..., H, W)`` as the DAVIS toolkit draws them.

    A pixel is boundary where it differs from its east, south or south-east neighbour. On the last row
    only the east neighbour counts, on the last column only the south one, and the bottom-right pixel
    is never boundary (so a mask filling the whole image has no boundary).
    """
    seg = as_bool_array(mask)
    out = np.zeros(seg.shape, dtype=bool)
    out[..., :, :-1] |= seg[..., :, :-1] ^ seg[..., :, 1:]  # east
    out[..., :-1, :] |= seg[..., :-1, :] ^ seg[..., 1:, :]  # south
    out[..., :-1, :-1] |= seg[..., :-1, :-1] ^ seg[..., 1:, 1:]  # south-east
    return out


def boundary_tolerance(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Dilation radius in pixels: ``ceil(bound_th * diagonal)``, or ``bound_th`` itself when it is >= 1."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"a pixel tolerance (bound_th >= 1) must be a whole number, got {bound_th}")
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def disk_kernel(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 structuring element: 1 where dx^2 + dy^2 <= r^2 (same as skimage's disk)."""
    offsets = np.arange(-radius, radius + 1)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius * radius).astype(np.uint8)


def boundary_measure(pred, gt, void=None, bound_th: float = DEFAULT_BOUND_TH) -> float | np.ndarray:
    """F = 2PR / (P + R) of the boundaries of ``pred`` and ``gt``, each matched within a disk tolerance.

    precision P = share of predicted boundary pixels within the tolerance of a ground-truth boundary
    pixel, recall R the converse. Both boundaries empty -> F = 1; exactly one empty -> F = 0. Void
    pixels are cleared from both masks before the boundaries are drawn.
    """
    pred, gt = as_bool_array(pred), as_bool_array(gt)
    void = None if void is None else as_bool_array(void)
    _check_shapes(pred, gt, void)
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    lead_shape = pred.shape[:-2]
    height, width = pred.shape[-2:]
    pred_b = boundary_map(pred).reshape(-1, height, width)
    gt_b = boundary_map(gt).reshape(-1, height, width)
    n_pred = pred_b.sum(axis=(1, 2), dtype=np.int64)
    n_gt = gt_b.sum(axis=(1, 2), dtype=np.int64)

    # Both boundaries empty: P = R = 1. One empty: one of P, R is 0 and F = 0.
    f = np.where((n_pred == 0) & (n_gt == 0), 1.0, 0.0)
    kernel = disk_kernel(boundary_tolerance(height, width, bound_th))
    for i in np.flatnonzero((n_pred > 0) & (n_gt > 0)):
        pred_dil = cv2.dilate(pred_b[i].view(np.uint8), kernel).astype(bool)
        gt_dil = cv2.dilate(gt_b[i].view(np.uint8), kernel).astype(bool)
        precision = np.count_nonzero(pred_b[i] & gt_dil) / n_pred[i]
        recall = np.count_nonzero(gt_b[i] & pred_dil) / n_gt[i]
        f[i] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return _scalar_or_array(f.reshape(lead_shape))
