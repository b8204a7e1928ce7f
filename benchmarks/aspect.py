"""Squash or keep the pixel scale? A data set whose images differ in size, inspected at both.

    sclvi bench aspect [--data ../shared/data] [--sets magnetic_tile] [--bank-images 100] [--bundle B]

The product squashes any image to a square when no camera frame size is given (the paper's protocol);
with one, it cuts the roi at native resolution (`geometry.frame/roi/scale`). A data set of crops of
varying size (magnetic_tile: 103-632 px wide, 222-403 high) has no one frame size, so the question is
whether the squash (textures stretched by up to 2.5x, differently per image) is what holds detection
back. `squash`: every image resized to 256x256; `native`: each image at its own size (cut down to a
multiple of 16 px). Rows: `raw pixels` = no learning at all (each 32-px patch at stride 8 averaged to 8x8
pixels after the frame photometric step, core/floors.py, exact 1-NN with faiss); with --bundle, `trained
encoder` = that dense bundle's encoder (a fully convolutional pass over an image of any size), its codes'
neighbourhood aggregation, eta, lambda, formula, scale fusion and image score, exact search of every code of
the bank images, no image retrieval and no level normalisation (both need one image size), so only the
geometry differs between the two rows. Bank: `--bank-images` training images (seeded choice), the same
for every row; map = mean over covering patches. Writes quality-aspect-cpu.md / .json (quality-aspect-<label>-cpu.* with --label).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image
import typer
from tqdm.auto import tqdm

from sclvi.benchmarks.common import OUT, benchmark_app, invoke, listed, machine, save_report, start
from sclvi.floors import CELL, raw_pixel_codes
from sclvi.benchmarks.protocols import label_option, report_stem
from sclvi.images import FRAME_MEAN, read_mask, read_rgb

PATCH, STRIDE = 32, 8
GEOMETRIES = ("squash", "native")


def load(path: Path, geometry: str, mask: bool = False) -> np.ndarray:
    """An image (or mask) at the geometry: 256x256, or its own size cut down to a multiple of 16 px (so both
    patch scales at strides 8 and 16 tile it exactly), at least 64 px."""
    img = read_mask(path, None) if mask else read_rgb(path, None)
    if geometry == "squash":
        size = (256, 256)
    else:
        size = (max(64, img.shape[1] // 16 * 16), max(64, img.shape[0] // 16 * 16))
    pil = Image.fromarray(img.astype(np.uint8) * (255 if mask else 1))
    out = np.asarray(pil.resize(size, Image.NEAREST if mask else Image.BILINEAR))
    return out > 127 if mask else out


def evaluate(ds: Any, geometry: str, anomaly_map: Callable[[np.ndarray], np.ndarray], label: str,
             top: int = 1) -> dict[str, Any]:
    """Image / pixel AUROC (and per defect type) of the maps `anomaly_map(image)` gives at one geometry; the image
    score is the mean of a map's `top` highest pixels (1: its max)."""
    from sclvi.maps import image_score
    from sclvi.metrics import auroc

    scores, pix_scores, pix_labels = [], [], []
    t0 = time.perf_counter()
    for item in tqdm(ds.test, desc=f"score {label} ({geometry})", unit="img"):
        m = anomaly_map(load(item.path, geometry))
        scores.append(image_score(m, top))
        if ds.has_masks and item.pixel_labelled:  # a defective image without a mask: its defect pixels are unknown
            gt = load(item.mask, geometry, mask=True) if item.mask else np.zeros(m.shape, bool)
            pix_scores.append(m[::4, ::4].ravel())  # every 4th pixel: the curve, at a sixteenth of the memory
            pix_labels.append(gt[::4, ::4].ravel())
    labels = np.array([t.is_anomalous for t in ds.test])
    s = np.array(scores)
    defects = np.array([t.defect for t in ds.test])
    return {
        "geometry": geometry, "kind": label,
        "image_auroc": auroc(labels, s),
        "pixel_auroc": auroc(np.concatenate(pix_labels), np.concatenate(pix_scores)) if pix_scores else None,
        "per_defect": {d: auroc(labels[(defects == "good") | (defects == d)], s[(defects == "good") | (defects == d)])
                       for d in ds.defect_types},
        "seconds_per_image": (time.perf_counter() - t0) / max(1, len(ds.test)),
    }


def floor(ds: Any, geometry: str, bank_images: list[Path]) -> dict[str, Any]:
    """The raw-pixel floor at one geometry."""
    import faiss

    from sclvi.geometry import PatchGrid
    from sclvi.maps import pixel_map

    mean = np.float32(FRAME_MEAN)  # one gray level: a mean image needs one image size
    dim = 3 * CELL * CELL
    index = faiss.IndexFlatL2(dim)
    for p in tqdm(bank_images, desc=f"bank ({geometry})", unit="img"):
        index.add(raw_pixel_codes(load(p, geometry), mean, PATCH, STRIDE, "frame").reshape(-1, dim))

    def anomaly_map(img: np.ndarray) -> np.ndarray:
        d, _ = index.search(raw_pixel_codes(img, mean, PATCH, STRIDE, "frame").reshape(-1, dim), 1)
        grid = PatchGrid(img.shape[0], img.shape[1], PATCH, STRIDE)
        return pixel_map(grid, np.sqrt(np.maximum(d[:, 0], 0)).reshape(grid.shape))

    return {"bank_images": len(bank_images), "bank_codes": int(index.ntotal),
            **evaluate(ds, geometry, anomaly_map, "raw pixels")}


def dense_bundle(path: Path) -> Any:
    """The bundle at `path` if its encoder takes an image of any size: the dense family (one fully convolutional
    pass) with the flat mean (one gray level, not a per-pixel mean image of one size)."""
    from sclvi.bundle import load_bundle
    from sclvi.errors import SclviError

    try:
        bundle = load_bundle(path)
    except SclviError as exc:
        raise typer.BadParameter(str(exc), param_hint="--bundle") from None
    cfg = bundle.config
    if cfg.encoder.family != "dense" or cfg.preprocess.mean != "flat":
        raise typer.BadParameter(f"{path} is a {cfg.encoder.family}-family bundle with preprocess.mean {cfg.preprocess.mean}: "
                                 "give a dense-family bundle (dense-lite, dense) with the flat mean (the default), which "
                                 "encodes an image of any size in one pass", param_hint="--bundle")
    return bundle


def encoder(ds: Any, geometry: str, bank_images: list[Path], bundle_path: Path) -> dict[str, Any]:
    """A trained dense bundle's encoder at one geometry: both scales of any image size in one fully convolutional
    pass, codes aggregated over the bundle's neighbourhood, the bundle's eta / lambda / formula against every code
    of the bank images (exact, unwindowed), maps fused and the image scored as the bundle says. No image
    retrieval and no level normalisation (both are measured on one image size): the same scoring at both
    geometries, so only the geometry differs."""
    from sclvi.embedding import FrameEmbedder
    from sclvi.engines.torch_backend import TorchBackend
    from sclvi.geometry import PatchGrid, TwoScaleGeometry
    from sclvi.images import normalise
    from sclvi.knn import make_patch_scorer
    from sclvi.maps import fuse_maps, pixel_map, smooth_map, top_pixels

    bundle = dense_bundle(bundle_path)
    cfg = bundle.config
    level = bundle.mean.reshape(-1, 3)[0].astype(np.float32)  # the flat mean: one gray level per channel
    g = cfg.geometry
    # the dense path encodes a frame of any size in one pass (the geometry is only used by the per-patch path)
    embedder = FrameEmbedder(TorchBackend(bundle), TwoScaleGeometry.from_config(g), cfg.bank.neighbourhood)
    scales = ((g.small_patch, g.small_stride), (2 * g.small_patch, g.large_stride))

    def codes(img: np.ndarray) -> list[np.ndarray]:
        frame = embedder.embed(normalise(img, np.broadcast_to(level, img.shape), cfg.preprocess.photometric)[None])
        return [frame.small[0], frame.large[0]]  # (rows, cols, D) per scale, aggregated as the bank's

    banks: list[list[np.ndarray]] = [[], []]
    for p in tqdm(bank_images, desc=f"encoder bank ({geometry})", unit="img"):
        for scale, c in enumerate(codes(load(p, geometry))):
            banks[scale].append(c.reshape(-1, c.shape[-1]))
    scoring = cfg.scoring.model_copy(update={"knn": "numba", "position_window": None})
    stacked = [np.concatenate(b) for b in banks]
    scorers = [make_patch_scorer(b, np.zeros((len(b), 2), np.int16), 1, scoring) for b in stacked]
    top = top_pixels(cfg.scoring.image_score, g.small_patch)

    def anomaly_map(img: np.ndarray) -> np.ndarray:
        maps = []
        for (patch, stride), scorer, c in zip(scales, scorers, codes(img)):
            grid = PatchGrid(img.shape[0], img.shape[1], patch, stride)
            maps.append(pixel_map(grid, scorer.score(c.reshape(-1, c.shape[-1])).reshape(grid.shape)))
        return smooth_map(fuse_maps(*maps, cfg.scoring.scale_fusion), cfg.scoring.map_sigma)

    return {"bank_images": len(bank_images), "bank_codes": int(len(stacked[0]) + len(stacked[1])),
            **evaluate(ds, geometry, anomaly_map, "trained encoder", top)}


def write_report(rows: list[dict[str, Any]], out: Path, label: str, seconds: float) -> Path:
    info = machine()
    lines = ["# Squashed to 256x256 or kept at native pixel scale", "",
             __doc__.split("\n\n", 2)[2].split("Writes")[0].strip(), "",
             f"Wall time {seconds / 60:.0f} min on the machine below.", ""]
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        defects = list(mine[0]["per_defect"])
        lines += [f"## {name} ({mine[0]['sizes']})", "",
                  "| row | geometry | bank images / codes | image AUROC | pixel AUROC | " + " | ".join(defects) + " | ms / image |",
                  "|---|---|---:|---:|---:|" + "---:|" * len(defects) + "---:|"]
        for r in mine:
            pix = "-" if r["pixel_auroc"] is None else f"{100 * r['pixel_auroc']:.1f}"
            lines.append(f"| {r['kind']} | {r['geometry']} | {r['bank_images']} / {r['bank_codes']:,} | {100 * r['image_auroc']:.1f} | {pix} | "
                         + " | ".join(f"{100 * r['per_defect'][d]:.1f}" for d in defects) + f" | {1000 * r['seconds_per_image']:.0f} |")
        bundle = next((r["bundle"] for r in mine if r.get("bundle")), None)
        lines += ["", f"Trained encoder: `{bundle}`.", ""] if bundle else [""]
    return save_report(out, f"quality-aspect-{report_stem('cpu', label)}", lines, info, {"rows": rows})


def aspect(
    data: Path = typer.Option(Path("../shared/data"), help="folder holding the data sets"),
    sets: list[str] = typer.Option(["magnetic_tile"], metavar="SET,...", help="data sets"),
    bank_images: int = typer.Option(100, help="training images in the bank (seeded choice)"),
    label: str = typer.Option("", callback=label_option, help="a name for a side run's files: quality-aspect-<label>-cpu.md "
                              "/ .json (as `bench quality --label`), so the main report is not overwritten"),
    bundle: Optional[list[str]] = typer.Option(
        None, metavar="SET=BUNDLE,...", help="also a trained dense bundle's encoder per set (SET=PATH; a bare PATH "
        "when one set is given)"),
    out: Path = OUT,
) -> Path:
    """A set of mixed image sizes squashed to 256 px or at native pixel scale: the raw-pixel floor, and a trained
    encoder's with --bundle."""
    from sclvi.dataset import read_dataset
    from sclvi.memory_bank import bank_images as choose_bank_images
    from sclvi.roi import image_sizes

    args = SimpleNamespace(data=data, sets=listed(sets, option="--sets"), bank_images=bank_images, label=label, out=start(out))
    bundles = bundle_per_set(listed(bundle, option="--bundle"), args.sets)
    for path in bundles.values():
        dense_bundle(path)  # refused before any work
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
        for geometry in GEOMETRIES if name in bundles else ():
            rows.append({"set": name, "sizes": described, "bundle": str(bundles[name]),
                         **encoder(ds, geometry, chosen, bundles[name])})
            path = write_report(rows, args.out, args.label, time.perf_counter() - t0)
    print(f"report: {path}")
    return path


def bundle_per_set(given: list[str], sets: list[str]) -> dict[str, Path]:
    """--bundle values as {set: path}: SET=PATH each, or one bare PATH for the only set."""
    if len(given) == 1 and "=" not in given[0] and len(sets) == 1:
        return {sets[0]: Path(given[0])}
    out = {}
    for item in given:
        name, eq, path = item.partition("=")
        if not eq or name not in sets:
            raise typer.BadParameter(f"{item!r}: give SET=PATH with SET one of --sets ({', '.join(sets)})",
                                     param_hint="--bundle")
        out[name] = Path(path)
    return out


app = benchmark_app(aspect)


def main(argv: list[str] | None = None) -> Path:
    return invoke(app, argv)


if __name__ == "__main__":
    app()
