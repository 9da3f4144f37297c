"""The embedded benchmark: a procedural, deterministic DAVIS-2017-layout dataset.

Each video shows 1..max_objects textured shapes (ellipses, polygons, blobs; every object has its own
colour and pattern) over a smooth-noise background that pans slowly. Objects move with smooth,
slowly turning velocities, bounce off walls (some walls lie beyond the frame, so objects leave and
come back), change scale, rotate, and occlude each other in a fixed depth order. Masks are dense:
an object that is fully outside or hidden in a frame is simply absent from that frame's PNG.

It is the default data of the quick start, so a fresh machine needs no download; it is read back
through :class:`mavos.data.davis.DavisReader` like real DAVIS.
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mavos.data.io import write_frame, write_mask
from mavos.data.records import DatasetError

GENERATOR_VERSION = 1
META_FILE = "meta.json"
RESOLUTION = "480p"  # the folder name DAVIS uses; our frames are smaller, the layout is what matters
YEAR = "2017"

DEFAULTS = dict(
    seed=0,
    num_train=12,
    num_val=4,
    train_length=40,
    val_lengths=(60, 60, 120, 300),
    height=240,
    width=432,
    max_objects=5,
)

_SUPERSAMPLE = 1.5  # templates are drawn this much larger than their base size, so upscaling stays sharp
_MIN_VISIBLE_FRACTION = 0.3  # of its unoccluded area, each object must show in frame 0
_MIN_VISIBLE_PIXELS = 40
_LONG_VIDEO = 100  # videos at least this long must contain an object that leaves and re-enters
_PATTERNS = ("stripes", "checker", "dots", "rings")
_SHAPES = ("ellipse", "polygon", "blob")


@dataclass
class _SceneObject:
    """One object: its template (drawn once) and its per-frame pose."""

    object_id: int
    alpha: np.ndarray  # (S, S) float32 coverage in [0, 1]
    texture: np.ndarray  # (S, S, 3) float32 RGB
    centers: np.ndarray  # (T, 2) float x, y in frame pixels
    scales: np.ndarray  # (T,) frame pixels per template pixel
    angles: np.ndarray  # (T,) degrees


def _params(**overrides) -> dict:
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown synthetic-dataset parameters: {sorted(unknown)}")
    p = {**DEFAULTS, **overrides}
    p["val_lengths"] = [int(v) for v in p["val_lengths"]]
    for key in ("seed", "num_train", "num_val", "train_length", "height", "width", "max_objects"):
        p[key] = int(p[key])
    if p["num_train"] < 0 or p["num_val"] < 0 or p["num_train"] + p["num_val"] == 0:
        raise ValueError("need at least one train or val video")
    if p["num_val"] and not p["val_lengths"]:
        raise ValueError("val_lengths must list at least one length")
    if min([p["train_length"], *p["val_lengths"]]) < 2:
        raise ValueError("videos need at least 2 frames")
    if p["height"] < 48 or p["width"] < 48:
        raise ValueError("frames must be at least 48x48")
    if not 1 <= p["max_objects"] <= 255:
        raise ValueError("max_objects must be in 1..255")
    return p


# ----------------------------------------------------------------------------------------- drawing
def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Band-limited noise in [-1, 1]: a coarse random grid upsampled with bicubic interpolation."""
    gh = max(2, round(cells * height / max(height, width)))
    gw = max(2, round(cells * width / max(height, width)))
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted, smooth colour field with a gradient: low saturation and low frequency, unlike objects."""
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.7)), np.float32) * 255
    out = np.empty((height, width, 3), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * rng.uniform(20, 50)
    luminance = 40 * _smooth_noise(rng, height, width, 5) + 15 * _smooth_noise(rng, height, width, 17)
    for c in range(3):
        out[..., c] = base[c] + luminance + gradient + 20 * _smooth_noise(rng, height, width, 7)
    out += rng.normal(0, 3, size=out.shape).astype(np.float32)  # film grain
    return np.clip(out, 0, 255)


def _shape_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random filled shape centred in a size x size canvas, within radius size/2 - 1."""
    canvas = np.zeros((size, size), np.uint8)
    c = (size - 1) / 2
    r = c - 1
    kind = _SHAPES[rng.integers(len(_SHAPES))]
    shift = 4  # cv2 sub-pixel bits: smoother edges
    if kind == "ellipse":
        axes = (r * rng.uniform(0.65, 1.0), r * rng.uniform(0.4, 0.9))
        cv2.ellipse(canvas, (round(c * 16), round(c * 16)), (round(axes[0] * 16), round(axes[1] * 16)),
                    rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, shift)
    else:
        if kind == "polygon":
            n = int(rng.integers(3, 9))
            # one vertex per angular sector keeps the polygon from degenerating into a sliver
            theta = (np.arange(n) + rng.uniform(0.2, 0.8, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
            radius = r * rng.uniform(0.6, 1.0, n)
        else:  # blob: a smooth random radial profile
            theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
            radius = np.full_like(theta, 0.72)
            for k in range(2, 5):
                radius += rng.uniform(0.04, 0.13) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
            radius = r * np.clip(radius, 0.35, 1.0)
        pts = np.stack([c + radius * np.cos(theta), c + radius * np.sin(theta)], 1)
        cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def _texture(rng: np.random.Generator, size: int, hue: float, pattern: str) -> np.ndarray:
    """A saturated two-colour pattern (plus grain): identifies the object and gives it trackable detail."""
    c1 = np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0)), np.float32)
    c2 = np.array(colorsys.hsv_to_rgb((hue + rng.uniform(-0.06, 0.06)) % 1.0, rng.uniform(0.5, 1.0), rng.uniform(0.25, 0.5)), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(0.18, 0.35) * size
    if pattern == "stripes":
        a = rng.uniform(0, np.pi)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)
    elif pattern == "checker":
        w = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    elif pattern == "dots":
        fx, fy = (xx % period) / period - 0.5, (yy % period) / period - 0.5
        w = (fx * fx + fy * fy < 0.09).astype(np.float32)
    else:  # rings
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        w = 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) / period)
    tex = (c1[None, None] * w[..., None] + c2[None, None] * (1 - w[..., None])) * 255
    tex += rng.normal(0, 6, size=tex.shape).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.float32)


# ------------------------------------------------------------------------------------------ motion
def _trajectory(rng: np.random.Generator, length: int, height: int, width: int, radius: float, exits: bool):
    """Centres, relative scales and angles of one object over ``length`` frames.

    Velocity turns slowly (a random walk on the heading) and reflects at walls. For ``exits``
    objects the walls lie beyond the frame edge by more than the object's extent, so the object
    leaves the frame completely before it bounces back in.
    """
    scale_amp = rng.uniform(0.1, 0.35)
    scale_period = rng.uniform(40, 160)
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(length, dtype=np.float64)
    rel_scale = np.exp(scale_amp * np.sin(2 * np.pi * t / scale_period + phase))
    extent = radius * float(np.exp(scale_amp))  # the largest the object ever gets
    if exits:
        margin = extent + radius * rng.uniform(0.2, 1.2)
        lo, hi = np.array([-margin, -margin]), np.array([width + margin, height + margin])
    else:
        inset = radius * rng.uniform(0.2, 0.9)  # the object may still be cut by the frame edge
        lo, hi = np.array([inset, inset]), np.array([width - inset, height - inset])
    speed = max(1.5, rng.uniform(0.05, 0.1) * 2 * radius)
    speed_wobble = 1.0 + 0.25 * np.sin(2 * np.pi * t / rng.uniform(30, 90) + rng.uniform(0, 2 * np.pi))
    turn = rng.normal(0, 0.05, size=length)
    heading = rng.uniform(0, 2 * np.pi)
    pos = np.array([rng.uniform(0.8 * radius, width - 0.8 * radius), rng.uniform(0.8 * radius, height - 0.8 * radius)])
    direction = np.array([np.cos(heading), np.sin(heading)])
    centers = np.empty((length, 2))
    for i in range(length):
        centers[i] = pos
        cs, sn = np.cos(turn[i]), np.sin(turn[i])
        direction = np.array([cs * direction[0] - sn * direction[1], sn * direction[0] + cs * direction[1]])
        pos = pos + speed * speed_wobble[i] * direction
        for axis in range(2):  # reflect at the walls
            if pos[axis] < lo[axis]:
                pos[axis] = 2 * lo[axis] - pos[axis]
                direction[axis] = abs(direction[axis])
            elif pos[axis] > hi[axis]:
                pos[axis] = 2 * hi[axis] - pos[axis]
                direction[axis] = -abs(direction[axis])
    angles = rng.uniform(0, 360) + rng.uniform(-1.0, 1.0) * t
    return centers, rel_scale, angles


def _leaves_and_returns(obj: _SceneObject, radius: float, height: int, width: int) -> bool:
    """True when the object is entirely outside the frame at some time and its centre is back inside later."""
    x, y = obj.centers[:, 0], obj.centers[:, 1]
    ext = radius * obj.scales * _SUPERSAMPLE
    out = (x < -ext) | (x > width + ext) | (y < -ext) | (y > height + ext)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    if not out.any():
        return False
    return bool(inside[int(np.argmax(out)):].any())


# ----------------------------------------------------------------------------------------- scenes
class _Scene:
    """A planned video: background canvas with its pan, and objects listed back to front."""

    def __init__(self, rng: np.random.Generator, length: int, height: int, width: int, max_objects: int) -> None:
        self.height, self.width, self.length = height, width, length
        self.pad = max(8, min(height, width) // 8)
        self.background = _background(rng, height + 2 * self.pad, width + 2 * self.pad)
        t = np.arange(length)
        pan = []
        for _ in range(2):
            amp, period, ph = rng.uniform(0.3, 0.9) * self.pad, rng.uniform(80, 240), rng.uniform(0, 2 * np.pi)
            pan.append(np.round(self.pad + amp * np.sin(2 * np.pi * t / period + ph)).astype(int))
        self.pan_x, self.pan_y = pan
        num = int(rng.integers(1, max_objects + 1))
        base_hue = rng.uniform()
        hues = base_hue + np.arange(num) / num + rng.uniform(-0.25, 0.25, num) / max(num, 1)
        patterns = rng.permutation(np.resize(np.array(_PATTERNS), max(num, len(_PATTERNS))))
        short = min(height, width)
        self.radii = rng.uniform(0.09, 0.18, num) * short
        self.objects: list[_SceneObject] = []
        for i in range(num):
            size = 2 * int(np.ceil(self.radii[i] * _SUPERSAMPLE)) + 3
            self.objects.append(_SceneObject(
                object_id=i + 1,
                alpha=_shape_alpha(rng, size),
                texture=_texture(rng, size, hues[i], str(patterns[i])),
                centers=np.zeros((length, 2)), scales=np.ones(length), angles=np.zeros(length),
            ))
        depth = rng.permutation(num)  # depth[0] is drawn first (farthest)
        self.objects = [self.objects[d] for d in depth]
        self._plan_motion(rng)

    def _plan_motion(self, rng: np.random.Generator) -> None:
        """Draw trajectories until frame 0 shows every object and long videos have an exit and return."""
        radius_of = {o.object_id: self.radii[o.object_id - 1] for o in self.objects}
        for _ in range(200):
            for obj in self.objects:
                r = radius_of[obj.object_id]
                exits = bool(rng.uniform() < 0.5)
                centers, rel_scale, angles = _trajectory(rng, self.length, self.height, self.width, r, exits)
                obj.centers, obj.angles = centers, angles
                obj.scales = rel_scale / _SUPERSAMPLE
            if self.length >= _LONG_VIDEO and not any(
                _leaves_and_returns(o, radius_of[o.object_id], self.height, self.width) for o in self.objects
            ):
                continue
            if self._all_visible_at_start():
                return
        raise RuntimeError("could not plan a synthetic video (frame size too small for its objects?)")

    def _all_visible_at_start(self) -> bool:
        _, labels, full_area = self.render(0, with_image=False)
        counts = np.bincount(labels.ravel(), minlength=len(self.objects) + 1)
        return all(counts[o.object_id] >= max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * full_area[o.object_id])
                   for o in self.objects)

    def render(self, t: int, with_image: bool = True) -> tuple[np.ndarray | None, np.ndarray, dict[int, float]]:
        """Frame t: (H, W, 3) uint8 image, (H, W) uint8 ids, and each object's unoccluded pixel area."""
        h, w = self.height, self.width
        image = None
        if with_image:
            y0, x0 = self.pan_y[t], self.pan_x[t]
            image = self.background[y0:y0 + h, x0:x0 + w].copy()
        labels = np.zeros((h, w), np.uint8)
        full_area: dict[int, float] = {}
        for obj in self.objects:
            size = obj.alpha.shape[0]
            c = (size - 1) / 2
            k = float(obj.scales[t])
            cx, cy = obj.centers[t]
            reach = c * k * 1.4143 + 2
            x0, x1 = max(0, int(np.floor(cx - reach))), min(w, int(np.ceil(cx + reach)) + 1)
            y0, y1 = max(0, int(np.floor(cy - reach))), min(h, int(np.ceil(cy + reach)) + 1)
            full_area[obj.object_id] = float(obj.alpha.sum()) * k * k
            if x0 >= x1 or y0 >= y1:
                continue
            m = cv2.getRotationMatrix2D((c, c), float(obj.angles[t]), k)
            m[0, 2] += cx - c - x0
            m[1, 2] += cy - c - y0
            box = (x1 - x0, y1 - y0)
            alpha = cv2.warpAffine(obj.alpha, m, box, flags=cv2.INTER_LINEAR, borderValue=0)
            labels[y0:y1, x0:x1][alpha >= 0.5] = obj.object_id
            if image is not None:
                tex = cv2.warpAffine(obj.texture, m, box, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
                region = image[y0:y1, x0:x1]
                a = alpha[..., None]
                image[y0:y1, x0:x1] = region * (1 - a) + tex * a
        if image is not None:
            image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
        return image, labels, full_area


# ------------------------------------------------------------------------------------------ writing
def _video_names(p: dict) -> dict[str, list[tuple[str, int, int]]]:
    """split -> [(name, length, video index)]; train and val use disjoint seed streams."""
    lengths = p["val_lengths"]
    return {
        "train": [(f"synth-train-{i:03d}", p["train_length"], i) for i in range(p["num_train"])],
        "val": [(f"synth-val-{i:03d}", lengths[i % len(lengths)], i) for i in range(p["num_val"])],
    }


def _write_video(root: Path, name: str, split_code: int, index: int, length: int, p: dict) -> dict:
    rng = np.random.default_rng([p["seed"], split_code, index])
    scene = _Scene(rng, length, p["height"], p["width"], p["max_objects"])
    frame_dir = root / "JPEGImages" / RESOLUTION / name
    anno_dir = root / "Annotations" / RESOLUTION / name
    frame_dir.mkdir(parents=True)
    anno_dir.mkdir(parents=True)
    for t in range(length):
        image, labels, _ = scene.render(t)
        write_frame(frame_dir / f"{t:05d}.jpg", image)
        write_mask(anno_dir / f"{t:05d}.png", labels)
    return {"length": length, "num_objects": len(scene.objects)}


def _is_synthetic(root: Path) -> dict | None:
    """The stored meta of a synthetic dataset at root, or None."""
    meta = root / META_FILE
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == "mavos.synthetic" else None


def generate_synthetic_davis(
    root: str | Path,
    *,
    seed: int = DEFAULTS["seed"],
    num_train: int = DEFAULTS["num_train"],
    num_val: int = DEFAULTS["num_val"],
    train_length: int = DEFAULTS["train_length"],
    val_lengths: Sequence[int] = DEFAULTS["val_lengths"],
    height: int = DEFAULTS["height"],
    width: int = DEFAULTS["width"],
    max_objects: int = DEFAULTS["max_objects"],
) -> Path:
    """(Re)write the synthetic dataset at ``root`` and return ``root``.

    The dataset is built in a sibling temp folder and renamed into place, so an interrupted run never
    leaves a half dataset. An existing ``root`` is replaced only if it is empty or a synthetic
    dataset itself (never someone's real data).
    """
    p = _params(seed=seed, num_train=num_train, num_val=num_val, train_length=train_length,
                val_lengths=val_lengths, height=height, width=width, max_objects=max_objects)
    root = Path(root)
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and _is_synthetic(root) is None)):
        raise DatasetError(f"{root}: exists and is not a synthetic dataset (no {META_FILE} from this generator); "
                           "refusing to overwrite it. Choose another folder.")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(root)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        videos: dict[str, dict] = {}
        image_sets = tmp / "ImageSets" / YEAR
        image_sets.mkdir(parents=True)
        for split_code, (split, entries) in enumerate(_video_names(p).items()):
            for name, length, index in entries:
                videos[name] = _write_video(tmp, name, split_code, index, length, p) | {"split": split}
            (image_sets / f"{split}.txt").write_text("".join(f"{name}\n" for name, _, _ in entries))
        meta = {"generator": "mavos.synthetic", "version": GENERATOR_VERSION, "params": p, "videos": videos}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        _swap_into_place(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


STALE_SECONDS = 3600  # a generation takes seconds to minutes; older temporaries belong to killed runs


def _remove_abandoned_builds(root: Path) -> None:
    """Delete the build and swap folders (``.<root>.tmp-*``, ``.<root>.old-*``) that runs killed mid-way left
    beside ``root`` (a SIGKILL skips the cleanup below; ``io.remove_stale_temporaries`` handles
    ``atomic_save``'s files, not these): tens of MB each, and nothing else removes them. Only
    those untouched for an hour go, so that a generation running beside this one keeps its folder."""
    now = time.time()
    for pattern in (f".{root.name}.tmp-*", f".{root.name}.old-*"):
        for leftover in root.parent.glob(pattern):
            try:
                stale = leftover.is_dir() and now - leftover.stat().st_mtime > STALE_SECONDS
            except OSError:  # removed meanwhile
                continue
            if stale:
                shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Replace root by tmp with renames; the old copy is deleted only after the new one is in place."""
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if old is not None and not root.exists():
            os.rename(old, root)
            old = None
        if _is_synthetic(root) is None:  # another process did not win the race either: a real failure
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_synthetic_davis(root: str | Path, **params) -> Path:
    """Return ``root``, generating the dataset first if it is missing or was made with other parameters."""
    root = Path(root)
    wanted = _params(**params)
    meta = _is_synthetic(root)
    if meta is not None and meta.get("version") == GENERATOR_VERSION and meta.get("params") == wanted:
        return root
    return generate_synthetic_davis(root, **wanted)


class SyntheticPrepare:
    """Picklable ``prepare`` hook for :class:`~mavos.data.datamodule.VOSDataModule`: makes the data on first use."""

    def __init__(self, root: str | Path, **params) -> None:
        _params(**params)  # fail early on a typo, not inside prepare_data
        self.root = str(root)
        self.params = dict(params)

    def __call__(self) -> Path:
        return ensure_synthetic_davis(self.root, **self.params)

    def __repr__(self) -> str:
        return f"SyntheticPrepare(root={self.root!r}, **{self.params})"
