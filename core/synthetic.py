"""Seeded synthetic inspection data in the MVTec AD layout, for tests and the demo.

Two classes: ``texture`` (a woven grating with random phase and noise, defects anywhere) and
``object`` (a machined disc at a slightly varying pose on a noisy background, defects on the part).
Defect types: scratch, spot, hole, and missing (a wedge of the part or a patch of weave gone).
Every defective test image gets a pixel mask.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("texture", "object")
DEFECTS = ("scratch", "spot", "hole", "missing")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(2 * np.pi * x / 12 + phase[0]) * np.sin(2 * np.pi * y / 12 + phase[1])
    img = 128 + 45 * weave + rng.normal(0, 6, (size, size))
    rgb = np.stack([img * 1.0, img * 0.92, img * 0.8], axis=-1)
    return np.clip(rgb, 0, 255)


def _object(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A disc with a bore and a key notch; returns the image and the part's mask."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.uniform(-3, 3, 2)
    r = np.hypot(y - cy, x - cx)
    img = 60 + rng.normal(0, 5, (size, size))
    part = r < 0.36 * size
    img[part] = 175 + 10 * np.cos(r[part] / (0.05 * size))  # turned rings on the face
    img[r < 0.12 * size] = 40  # bore
    notch = (np.abs(x - cx) < 0.03 * size) & (y < cy - 0.28 * size) & part
    img[notch] = 90
    rgb = np.stack([img, img * 0.97, img * 0.9], axis=-1) + rng.normal(0, 3, (size, size, 1))
    return np.clip(rgb, 0, 255), part & (r >= 0.12 * size)


def _draw_mask(size: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    m = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(m))
    return np.asarray(m) > 0


def _defect(rng: np.random.Generator, kind: str, img: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Paint one defect of `kind` centred on a random pixel of `where`; returns its mask."""
    size = img.shape[0]
    ys, xs = np.nonzero(where)
    i = rng.integers(len(ys))
    cy, cx = float(ys[i]), float(xs[i])
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.08, 0.16) * size
        dy, dx = half * np.sin(angle), half * np.cos(angle)
        width = int(rng.integers(2, 4))
        mask = _draw_mask(size, lambda d: d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width))
        value = rng.choice([25.0, 235.0])
        img[mask] = value + rng.normal(0, 4, (mask.sum(), 1))
    elif kind == "spot":
        ry, rx = rng.uniform(0.02, 0.045, 2) * size
        mask = _draw_mask(size, lambda d: d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255))
        img[mask] = img[mask] * 0.35 + np.array([150.0, 60.0, 40.0]) * 0.65  # a rust-coloured stain
    elif kind == "hole":
        rad = rng.uniform(0.025, 0.045) * size
        mask = _draw_mask(size, lambda d: d.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=255))
        img[mask] = 8 + rng.normal(0, 2, (mask.sum(), 1))
    elif kind == "missing":
        side = rng.uniform(0.06, 0.1) * size
        mask = _draw_mask(size, lambda d: d.rectangle([cx - side, cy - side / 2, cx + side, cy + side / 2], fill=255))
        img[mask] = img[mask].mean(axis=0) * 0.55 + 20  # material gone: a flat, darker surface
    else:
        raise ValueError(f"unknown defect {kind!r}; choose from {DEFECTS}")
    return mask


def make_image(rng: np.random.Generator, cls: str, size: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image of class `cls`, with a defect if asked, and its mask."""
    if cls == "texture":
        img = _texture(rng, size)
        margin = int(0.1 * size)
        where = np.zeros((size, size), dtype=bool)
        where[margin:-margin, margin:-margin] = True
    elif cls == "object":
        img, where = _object(rng, size)
    else:
        raise ValueError(f"unknown synthetic class {cls!r}; choose from {CLASSES}")
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        mask = _defect(rng, defect, img, where)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_synthetic(
    root: str | Path,
    cls: str = "texture",
    size: int = 256,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 5,
    seed: int = 0,
) -> Path:
    """Write one class in the MVTec AD layout under root/cls and return that folder."""
    out = Path(root) / cls
    rng = np.random.default_rng([seed, CLASSES.index(cls) if cls in CLASSES else 99])

    def save(img: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)

    for i in range(n_train):
        save(make_image(rng, cls, size, None)[0], out / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        save(make_image(rng, cls, size, None)[0], out / "test" / "good" / f"{i:03d}.png")
    for defect in DEFECTS:
        for i in range(n_test_defect):
            img, mask = make_image(rng, cls, size, defect)
            save(img, out / "test" / defect / f"{i:03d}.png")
            save(mask.astype(np.uint8) * 255, out / "ground_truth" / defect / f"{i:03d}_mask.png")
    return out
