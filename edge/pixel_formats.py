"""Camera pixel formats -> (H, W) gray or (H, W, 3) RGB uint8, the two layouts the ring carries."""

from __future__ import annotations

import numpy as np

from sclvi.errors import DataError

_BAYER = {  # 2x2 tile layout: positions of R, G1, G2, B
    "BayerRG8": ((0, 0), (0, 1), (1, 0), (1, 1)),
    "BayerBG8": ((1, 1), (0, 1), (1, 0), (0, 0)),
    "BayerGR8": ((0, 1), (0, 0), (1, 1), (1, 0)),
    "BayerGB8": ((1, 0), (0, 0), (1, 1), (0, 1)),
}
SUPPORTED = ("Mono8", "RGB8", "BGR8", "RGBa8", "BGRa8", *_BAYER)


def to_array(data: np.ndarray, width: int, height: int, fmt: str) -> np.ndarray:
    """Convert one buffer. Bayer is demosaiced by 2x2 super-pixels (half resolution, no interpolation
    artefacts); the model resizes to its input size anyway."""
    flat = np.asarray(data, dtype=np.uint8).ravel()
    channels = {"Mono8": 1, "RGB8": 3, "BGR8": 3, "RGBa8": 4, "BGRa8": 4}.get(fmt, 1 if fmt in _BAYER else None)
    if channels is None:
        raise DataError(f"pixel format {fmt!r} is not supported; use one of {', '.join(SUPPORTED)}")
    if flat.size < width * height * channels:
        raise DataError(f"incomplete {fmt} buffer: {flat.size} bytes for {width}x{height}")
    img = flat[: width * height * channels].reshape(height, width, channels) if channels > 1 else flat[: width * height].reshape(height, width)
    if fmt == "Mono8" or fmt == "RGB8":
        return img
    if fmt == "BGR8":
        return img[:, :, ::-1]
    if fmt == "RGBa8":
        return img[:, :, :3]
    if fmt == "BGRa8":
        return img[:, :, 2::-1]
    (ry, rx), (g1y, g1x), (g2y, g2x), (by, bx) = _BAYER[fmt]
    h2, w2 = height // 2 * 2, width // 2 * 2
    m = img[:h2, :w2].astype(np.uint16)
    r = m[ry::2, rx::2]
    g = (m[g1y::2, g1x::2] + m[g2y::2, g2x::2]) // 2
    b = m[by::2, bx::2]
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """(H, W) gray or (H, W, 3) -> (H, W, 3) RGB."""
    return np.repeat(frame[:, :, None], 3, axis=2) if frame.ndim == 2 else frame
