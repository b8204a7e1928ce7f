"""Image-level retrieval before the patch k-NN (SPADE, Cohen & Hoshen 2020): a frame is scored only against
the memory items of its K most similar training images.

Why: a line that runs several variants (magnetic_tile's tiles come in several finishes and sizes) fills one
bank with all of them, and a patch of one variant's texture found on another variant's part then has close
neighbours from the wrong variant and looks normal. Restricting the search to the images that look most
like the whole frame keeps the comparison within the variant; on a single-variant line the K nearest images
are as good as any. The k-NN also searches K images instead of all of them.

The frame descriptor is the mean of its codes over the patch grid (SPADE's global pooling), per scale, each
scale's part divided by its spread over the bank's images so both scales count alike. Not standardised per
feature: a feature nearly constant over the good images would be blown up, and a defect that moves it would
then pick the nearest images at random. It is computed from the bank itself (its codes are stored image by
image), so a bundle needs no extra file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sclvi.errors import BundleError


def frame_descriptor(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """(..., cells, D) codes of both scales -> (..., 2 D): the mean code of each scale."""
    return np.concatenate([small.mean(axis=-2), large.mean(axis=-2)], axis=-1).astype(np.float32)


def whole_images(banks: dict[str, np.ndarray], cells: dict[str, int]) -> bool:
    """Do both banks hold the same number of whole images (no coreset thinned them)?"""
    images = {scale: len(codes) // cells[scale] for scale, codes in banks.items()}
    return not any(len(codes) % cells[s] for s, codes in banks.items()) and len(set(images.values())) == 1


@dataclass(frozen=True)
class ImageRetrieval:
    """The bank's images as descriptors, and which rows of each scale's bank belong to which image."""

    descriptors: np.ndarray  # (images, 2 D), centred and scaled
    centre: np.ndarray  # (2 D,)
    spread: np.ndarray  # (2 D,): one value per scale, repeated over its D features
    k: int

    @classmethod
    def from_banks(cls, banks: dict[str, np.ndarray], cells: dict[str, int], k: int) -> "ImageRetrieval":
        """`banks`: (count, D) codes per scale, stored image by image (no coreset); `cells`: codes per image."""
        if not whole_images(banks, cells):
            raise BundleError("bank.retrieve needs banks stored image by image (no coreset): rebuild the bank with "
                              "`sclvi bank BUNDLE DATA --coreset-ratio 1`, or set bank.retrieve 0")
        n = len(banks["small"]) // cells["small"]
        grids = {s: np.asarray(banks[s], dtype=np.float32).reshape(n, cells[s], -1) for s in ("small", "large")}
        desc = frame_descriptor(grids["small"], grids["large"])
        centre = desc.mean(0)
        d = desc.shape[1] // 2
        spread = np.repeat([np.sqrt(desc[:, :d].var(0).sum()), np.sqrt(desc[:, d:].var(0).sum())], d) + 1e-6
        return cls((desc - centre) / spread, centre, spread, min(k, n))

    @property
    def images(self) -> int:
        return len(self.descriptors)

    def nearest(self, small: np.ndarray, large: np.ndarray, exclude: int | None = None) -> np.ndarray:
        """Indices of the K bank images nearest to a frame whose codes are `small` / `large` (cells, D), in
        ascending image order (the bank's row order, so the search visits memory in sequence). `exclude`: a bank
        image never picked (a bank image scored as if it were not in the bank: core/levels.py)."""
        q = (frame_descriptor(small.reshape(-1, small.shape[-1]), large.reshape(-1, large.shape[-1])) - self.centre) / self.spread
        d = ((self.descriptors - q) ** 2).sum(1)
        candidates = np.arange(len(d))
        if exclude is not None:
            candidates = np.delete(candidates, exclude)
            d = d[candidates]
        return np.sort(candidates[np.argpartition(d, self.k - 1)[: self.k]]) if self.k < len(d) else candidates


def image_rows(images: np.ndarray, cells: int) -> np.ndarray:
    """Rows of a bank stored image by image (`cells` codes each) that belong to `images`."""
    return (np.asarray(images)[:, None] * cells + np.arange(cells)).ravel()
