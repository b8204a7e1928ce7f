"""Squash or keep the pixel scale? The raw-pixel floor on a data set whose images differ in size, at both.

    sclvi bench aspect [--data ../shared/data] [--sets magnetic_tile] [--bank-images 100]

The product squashes any image to a square when no camera frame size is given (the paper's protocol);
with one, it cuts the roi at native resolution (`geometry.frame/roi/scale`). A data set of crops of
varying size (magnetic_tile: 103-632 px wide, 222-403 high) has no one frame size, so the question is
whether the squash (textures stretched by up to 2.5x, differently per image) is what holds detection
back. Measured with no learning at all, so only the geometry differs: each 32-px patch at stride 8
averaged to 8x8 pixels after the frame photometric step (benchmarks/floors.py), exact 1-NN (faiss) to
the patches of `--bank-images` training images, map = mean over covering patches, image score = max.
`squash`: every image resized to 256x256; `native`: each image at its own size (cropped to a multiple
of 8 px). Writes quality-aspect-<label>.md / .json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image
import typer
from tqdm.auto import tqdm

from sclvi.benchmarks.common import OUT, benchmark_app, invoke, listed, machine, machine_table, start
from sclvi.benchmarks.floors import CELL, raw_pixel_codes
from sclvi.images import FRAME_MEAN, read_mask, read_rgb

PATCH, STRIDE = 32, 8
GEOMETRIES = ("squash", "native")


def load(path: Path, geometry: str, mask: bool = False) -> np.ndarray:
    """An image (or mask) at the geometry: 256x256, or its own size cut down to a multiple of 8 px."""
    img = read_mask(path, None) if mask else read_rgb(path, None)
    if geometry == "squash":
        size = (256, 256)
    else:
        size = (max(64, img.shape[1] // 8 * 8), max(64, img.shape[0] // 8 * 8))
    pil = Image.fromarray(img.astype(np.uint8) * (255 if mask else 1))
    out = np.asarray(pil.resize(size, Image.NEAREST if mask else Image.BILINEAR))
    return out > 127 if mask else out


def floor(ds: Any, geometry: str, bank_images: list[Path]) -> dict[str, Any]:
    """Image / pixel AUROC (and per defect type) of the raw-pixel floor at one geometry."""
    import faiss

    from sclvi.geometry import PatchGrid
    from sclvi.maps import image_score, pixel_map
    from sclvi.metrics import auroc

    mean = np.float32(FRAME_MEAN)  # one gray level: a mean image needs one image size
    dim = 3 * CELL * CELL
    index = faiss.IndexFlatL2(dim)
    for p in tqdm(bank_images, desc=f"bank ({geometry})", unit="img"):
        index.add(raw_pixel_codes(load(p, geometry), mean, PATCH, STRIDE, "frame").reshape(-1, dim))
    scores, pix_scores, pix_labels = [], [], []
    t0 = time.perf_counter()
    for item in tqdm(ds.test, desc=f"score ({geometry})", unit="img"):
        img = load(item.path, geometry)
        codes = raw_pixel_codes(img, mean, PATCH, STRIDE, "frame")
        d, _ = index.search(codes.reshape(-1, dim), 1)
        grid = PatchGrid(img.shape[0], img.shape[1], PATCH, STRIDE)
        m = pixel_map(grid, np.sqrt(np.maximum(d[:, 0], 0)).reshape(grid.shape))
        scores.append(image_score(m))
        if ds.has_masks and item.pixel_labelled:  # a defective image without a mask: its defect pixels are unknown
            gt = load(item.mask, geometry, mask=True) if item.mask else np.zeros(m.shape, bool)
            pix_scores.append(m[::4, ::4].ravel())  # every 4th pixel: the curve, at a sixteenth of the memory
            pix_labels.append(gt[::4, ::4].ravel())
    labels = np.array([t.is_anomalous for t in ds.test])
    s = np.array(scores)
    defects = np.array([t.defect for t in ds.test])
    return {
        "geometry": geometry, "bank_images": len(bank_images), "bank_codes": int(index.ntotal),
        "image_auroc": auroc(labels, s),
        "pixel_auroc": auroc(np.concatenate(pix_labels), np.concatenate(pix_scores)) if pix_scores else None,
        "per_defect": {d: auroc(labels[(defects == "good") | (defects == d)], s[(defects == "good") | (defects == d)])
                       for d in ds.defect_types},
        "seconds_per_image": (time.perf_counter() - t0) / max(1, len(ds.test)),
    }


def write_report(rows: list[dict[str, Any]], out: Path, label: str, seconds: float) -> Path:
    info = machine()
    lines = ["# Squashed to 256x256 or kept at native pixel scale: the raw-pixel floor", "",
             __doc__.split("\n\n", 2)[2].split("Writes")[0].strip(), "",
             f"Wall time {seconds / 60:.0f} min on the machine below.", ""]
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        defects = list(mine[0]["per_defect"])
        lines += [f"## {name} ({mine[0]['sizes']})", "",
                  "| geometry | bank images / codes | image AUROC | pixel AUROC | " + " | ".join(defects) + " | ms / image |",
                  "|---|---:|---:|---:|" + "---:|" * len(defects) + "---:|"]
        for r in mine:
            pix = "-" if r["pixel_auroc"] is None else f"{100 * r['pixel_auroc']:.1f}"
            lines.append(f"| {r['geometry']} | {r['bank_images']} / {r['bank_codes']:,} | {100 * r['image_auroc']:.1f} | {pix} | "
                         + " | ".join(f"{100 * r['per_defect'][d]:.1f}" for d in defects) + f" | {1000 * r['seconds_per_image']:.0f} |")
        lines.append("")
    lines += ["## Machine", "", machine_table(info), ""]
    path = out / f"quality-aspect-{label}.md"
    path.write_text("\n".join(lines))
    (out / f"quality-aspect-{label}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2, default=str))
    return path


def aspect(
    data: Path = typer.Option(Path("../shared/data"), help="folder holding the data sets"),
    sets: list[str] = typer.Option(["magnetic_tile"], metavar="SET,...", help="data sets"),
    bank_images: int = typer.Option(100, help="training images in the bank (seeded choice)"),
    label: str = typer.Option("cpu", help="report name suffix"),
    out: Path = OUT,
) -> Path:
    """Raw-pixel floor on a set of mixed image sizes, squashed to 256 px or at native pixel scale."""
    from sclvi.dataset import read_dataset
    from sclvi.memory_bank import bank_images as choose_bank_images
    from sclvi.roi import image_sizes

    args = SimpleNamespace(data=data, sets=listed(sets, option="--sets"), bank_images=bank_images, label=label, out=start(out))
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.sets:
        ds = read_dataset(args.data / name)
        sizes = image_sizes(ds.train)
        ws, hs = [w for w, _ in sizes], [h for _, h in sizes]
        described = f"{len(sizes)} image sizes, {min(ws)}-{max(ws)} x {min(hs)}-{max(hs)} px"
        chosen = choose_bank_images(ds.train, args.bank_images, 0)
        for geometry in GEOMETRIES:
            rows.append({"set": name, "sizes": described, **floor(ds, geometry, chosen)})
            path = write_report(rows, args.out, args.label, time.perf_counter() - t0)
    print(f"report: {path}")
    return path


app = benchmark_app(aspect)


def main(argv: list[str] | None = None) -> Path:
    return invoke(app, argv)


if __name__ == "__main__":
    app()
