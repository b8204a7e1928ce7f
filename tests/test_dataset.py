"""The MVTec-layout reader and image loading: clear errors, any size, grayscale accepted."""

import numpy as np
import pytest
from PIL import Image

from sclvi.dataset import read_dataset
from sclvi.errors import DataError
from sclvi.images import check_frame, read_mask, read_rgb


def test_reads_the_layout(synthetic_object):
    ds = read_dataset(synthetic_object)
    assert len(ds.train) == 6
    assert ds.defect_types == ["hole", "missing", "scratch", "spot"]
    assert ds.has_masks
    bad = [t for t in ds.test if t.is_anomalous]
    assert len(bad) == 8 and all(t.mask.name == f"{t.path.stem}_mask.png" for t in bad)


def test_missing_folder_and_empty_train(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="train/good"):
        read_dataset(tmp_path / "x")
    (tmp_path / "x" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        read_dataset(tmp_path / "x")


def test_test_set_needs_both_classes(tmp_path):
    good = tmp_path / "d" / "train" / "good"
    good.mkdir(parents=True)
    Image.new("L", (40, 40)).save(good / "a.png")
    (tmp_path / "d" / "test" / "good").mkdir(parents=True)
    Image.new("L", (40, 40)).save(tmp_path / "d" / "test" / "good" / "a.png")
    assert len(read_dataset(tmp_path / "d", need_test=False).train) == 1
    with pytest.raises(DataError, match="both good and defective"):
        read_dataset(tmp_path / "d")


def test_unreadable_image(tmp_path):
    f = tmp_path / "broken.png"
    f.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image"):
        read_rgb(f, 64)
    with pytest.raises(DataError, match="does not exist"):
        read_rgb(tmp_path / "gone.png", 64)


def test_grayscale_and_any_size_are_accepted(tmp_path):
    f = tmp_path / "gray.jpg"
    Image.fromarray(np.tile(np.arange(150, dtype=np.uint8), (90, 1))).save(f)
    img = read_rgb(f, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    m = tmp_path / "m.png"
    mask = np.zeros((90, 150), np.uint8)
    mask[30:60, 50:100] = 255
    Image.fromarray(mask).save(m)
    r = read_mask(m, 64)
    assert r.dtype == bool and 0 < r.mean() < 0.5


def test_in_memory_frames_are_checked():
    assert check_frame(np.zeros((64, 64), np.uint8), 64).shape == (64, 64, 3)
    with pytest.raises(DataError, match="model input is 64x64"):
        check_frame(np.zeros((60, 64, 3), np.uint8), 64)
    with pytest.raises(DataError, match="expected an"):
        check_frame(np.zeros((64, 64, 5), np.uint8), 64)


def test_defect_types_without_masks_are_left_out_of_pixel_metrics(tmp_path):
    """A real set may ship masks for some defect types only. Those images' defect pixels are unknown: counting them
    as normal would sink the pixel AUROC, and dropping every pixel metric hides what the masks do say."""
    from sclvi.config import GeometryConfig
    from sclvi.evaluate import metrics_report, test_masks

    root = tmp_path / "d"
    for sub in ("train/good", "test/good", "test/scratch", "test/dent", "ground_truth/scratch"):
        (root / sub).mkdir(parents=True)
    Image.new("L", (64, 64)).save(root / "train" / "good" / "a.png")
    square = np.zeros((64, 64), np.uint8)
    square[8:24, 8:24] = 255
    for i in range(2):
        Image.new("L", (64, 64)).save(root / "test" / "good" / f"{i}.png")
        Image.new("L", (64, 64)).save(root / "test" / "scratch" / f"{i}.png")
        Image.fromarray(square).save(root / "ground_truth" / "scratch" / f"{i}_mask.png")
        Image.new("L", (64, 64)).save(root / "test" / "dent" / f"{i}.png")
    ds = read_dataset(root)
    assert ds.has_masks and ds.unmasked == {"dent": 2}
    assert [t.pixel_labelled for t in ds.test] == [False, False, True, True, True, True]  # dent, good, scratch

    masks = test_masks(ds, GeometryConfig(image_size=64))
    maps = np.zeros((6, 64, 64))
    maps[masks] = 1.0  # the marked scratches score high, and so does the dents' unmarked region
    maps[:2, 40:60, 40:60] = 1.0
    report = metrics_report(ds, np.array([1, 1, 0, 0, 1, 1.0]), maps, masks)
    assert report["pixel_auroc"] == pytest.approx(1.0) and report["pro"] == pytest.approx(1.0)
    assert report["pixel_metrics_leave_out"] == {"dent": 2}
    assert report["per_defect"]["scratch"]["pixel_auroc"] == pytest.approx(1.0)
    assert np.isnan(report["per_defect"]["dent"]["pixel_auroc"]) and report["per_defect"]["dent"]["image_auroc"] == 1.0


def test_masks_of_other_sets_naming_and_values_are_read_as_defects(tmp_path):
    """Real sets beyond MVTec AD name masks `NNN.png` / `.bmp` and store 0/1 labels, colours or palette indices;
    read as MVTec's `NNN_mask.png` 0/255 gray only, they were "no mask" or an all-normal mask."""
    root = tmp_path / "d"
    for sub in ("train/good", "test/good", "test/crack", "test/dent", "test/stain",
                "ground_truth/crack", "ground_truth/dent", "ground_truth/stain"):
        (root / sub).mkdir(parents=True)
    for sub in ("train/good", "test/good"):
        Image.new("L", (32, 32)).save(root / sub / "000.png")
    labels = np.zeros((32, 32), np.uint8)
    labels[4:12, 4:12] = 1
    for defect, stem in (("crack", "000"), ("dent", "001"), ("stain", "002")):
        Image.new("L", (32, 32)).save(root / "test" / defect / f"{stem}.png")
    Image.fromarray(labels).save(root / "ground_truth" / "crack" / "000.bmp")  # 0/1 labels, VisA-style
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # index 1 is dark red: gray 38
    palette.save(root / "ground_truth" / "dent" / "001.png")
    Image.fromarray(np.stack([labels * 200, labels * 0, labels * 0], axis=2)).save(
        root / "ground_truth" / "stain" / "002_mask.png")  # a colour on black; `_mask` beats the decoy below
    Image.new("L", (32, 32)).save(root / "ground_truth" / "stain" / "002.png")
    ds = read_dataset(root)
    bad = {t.defect: t for t in ds.test if t.is_anomalous}
    assert {d: t.mask.name for d, t in bad.items()} == {"crack": "000.bmp", "dent": "001.png", "stain": "002_mask.png"}
    for t in bad.values():
        m = read_mask(t.mask, None)
        assert m.sum() == 64 and m[4:12, 4:12].all(), t.mask
        assert read_mask(t.mask, 64).sum() == 256  # resized: still the same region
    mvtec = np.zeros((32, 32), np.uint8)
    mvtec[0, 0], mvtec[5, 5] = 3, 255  # 0/255 masks keep their 127 threshold: a stray low value is not a defect
    Image.fromarray(mvtec).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", None).sum() == 1
