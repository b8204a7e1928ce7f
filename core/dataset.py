"""Reader for the MVTec AD folder layout: train/good, test/<defect>, ground_truth/<defect>/NNN_mask.png."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sclvi.errors import DataError
from sclvi.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class TestItem:
    path: Path
    defect: str  # "good" or the defect type
    mask: Path | None  # None for good images, or where the data set ships no masks

    @property
    def is_anomalous(self) -> bool:
        return self.defect != "good"

    @property
    def pixel_labelled(self) -> bool:
        """Every pixel's truth is known: a good image (all normal) or a defective one with its mask."""
        return not self.is_anomalous or self.mask is not None


@dataclass(frozen=True)
class MVTecDataset:
    root: Path
    train: list[Path]
    test: list[TestItem]

    @property
    def has_masks(self) -> bool:
        """Pixel metrics need masks: some defective test image has one (those without are left out of them)."""
        return any(t.is_anomalous and t.mask is not None for t in self.test)

    @property
    def unmasked(self) -> dict[str, int]:
        """Defective test images without a mask, per defect type: pixel metrics cannot count them."""
        return dict(Counter(t.defect for t in self.test if not t.pixel_labelled))

    @property
    def defect_types(self) -> list[str]:
        return sorted({t.defect for t in self.test if t.is_anomalous})


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _masks(folder: Path) -> dict[str, Path]:
    """Mask files of one defect type by the stem of their image: `NNN_mask.png` (MVTec AD) or, as other sets name
    them, `NNN.png` / `NNN.bmp` (any image suffix); the `_mask` name wins where both exist."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for p in sorted(_images(folder), key=lambda p: p.stem.endswith("_mask")):  # `_mask` names last: they win
        found[p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem] = p
    return found


def read_dataset(root: str | Path, need_test: bool = True) -> MVTecDataset:
    """Index a data set folder, failing with a message that says what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data set folder {root} does not exist")
    good = root / "train" / "good"
    if not good.is_dir():
        raise DataError(f"{root} has no train/good folder: expected the MVTec AD layout (train/good, test/<defect>)")
    train = _images(good)
    if not train:
        raise DataError(f"{good} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    test: list[TestItem] = []
    test_root = root / "test"
    if test_root.is_dir():
        for defect_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
            defect = defect_dir.name
            masks = _masks(root / "ground_truth" / defect) if defect != "good" else {}
            for img in _images(defect_dir):
                test.append(TestItem(img, defect, masks.get(img.stem)))
    if need_test:
        if not test:
            raise DataError(f"{root} has no test images under test/<defect>/")
        kinds = {t.is_anomalous for t in test}
        if kinds != {True, False}:
            raise DataError(f"{root}/test needs both good and defective images for AUROC")
    return MVTecDataset(root, train, test)
