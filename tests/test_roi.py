"""Region of interest at native resolution (issue 11): geometry rules, exact crop/scale/box mapping,
rectangular codes equal per-patch codes, rectangular position windows, training, and the runtime refusing
frames of another size."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sclvi.config import build_config
from sclvi.errors import ConfigError, DataError
from sclvi.roi import FrameMapping
from test_dense import TINY_DENSE
from test_edge_runtime import _run, replay, runtime_config  # noqa: F401 (fixture)


def _dense(geometry: dict):
    return build_config("dense-lite", {"encoder": TINY_DENSE, "geometry": geometry})


def test_roi_geometry_is_validated_with_a_hint():
    g = _dense({"frame": [300, 200], "roi": [10, 20, 160, 128]}).geometry
    assert g.input_hw == (128, 160) and "roi [10, 20, 160, 128] of 300x200" in g.describe()
    assert _dense({"frame": [640, 512], "scale": 0.25}).geometry.input_hw == (128, 160)  # whole frame, scaled
    with pytest.raises(ConfigError, match="inside"):
        _dense({"frame": [300, 200], "roi": [200, 20, 160, 128]})
    with pytest.raises(ConfigError, match="nearest that fits: 144 px"):
        _dense({"frame": [300, 200], "roi": [0, 0, 150, 128]})
    with pytest.raises(ConfigError, match="needs the camera frame size"):
        _dense({"roi": [0, 0, 128, 128]})


def test_frames_map_to_the_input_and_boxes_back_to_camera_pixels():
    from sclvi.edge.decide import defect_regions

    g = _dense({"frame": [300, 200], "roi": [40, 24, 160, 128], "scale": 0.5}).geometry
    m = FrameMapping.from_config(g)
    assert m.input_hw == (64, 80)
    frame = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(frame[24:152, 40:200]).resize((80, 64), Image.BILINEAR))
    np.testing.assert_array_equal(m.to_input(frame), expected)
    # a defect at camera x 60..79, y 40..55 -> input cols 10..19, rows 8..15 -> back to the same camera box
    mask = np.zeros((200, 300), bool)
    mask[40:56, 60:80] = True
    on_input = m.mask_to_input(mask)
    assert on_input.sum() == 8 * 10 and on_input[8:16, 10:20].all()
    regions = defect_regions(on_input.astype(np.float32), 0.5, (200, 300), m)
    assert len(regions) == 1 and regions[0]["box"] == [60, 40, 80, 56] and regions[0]["area"] == 320
    placed = m.to_camera_map(np.ones((64, 80), np.float32), (200, 300))
    assert placed[24:152, 40:200].min() == 1.0 and placed.sum() == 160 * 128  # zero outside the roi
    with pytest.raises(DataError, match="trained on 300x200"):
        m.to_input(frame[:, :299])  # never resized


def test_rectangular_roi_codes_equal_per_patch_codes(tmp_path):
    from conftest import make_bundle
    from sclvi.embedding import FrameEmbedder
    from sclvi.engines.torch_backend import TorchBackend
    from sclvi.geometry import TwoScaleGeometry

    cfg = _dense({"frame": [200, 120], "roi": [20, 12, 160, 96]})
    geometry = TwoScaleGeometry.from_config(cfg.geometry)
    assert (geometry.small.shape, geometry.large.shape) == ((17, 33), (3, 7))
    backend = TorchBackend(make_bundle(tmp_path / "b", cfg))
    frames = np.random.default_rng(0).normal(scale=0.5, size=(2, 3, 96, 160)).astype(np.float32)
    dense = FrameEmbedder(backend, geometry).embed(frames)  # one fully convolutional pass
    del backend.encode_frames
    per_patch = FrameEmbedder(backend, geometry).embed(frames)  # every patch cut out and embedded alone
    assert dense.small.shape == (2, 17, 33, 16) and dense.large.shape == (2, 3, 7, 16)
    np.testing.assert_allclose(dense.small, per_patch.small, atol=1e-4)
    np.testing.assert_allclose(dense.large, per_patch.large, atol=1e-4)


def test_position_windows_on_a_rectangular_grid_match_the_reference():
    from sclvi.config import ScoringConfig
    from sclvi.knn.buckets import grid_positions
    from sclvi.knn.numba_cpu import NumbaPatchScorer
    from sclvi.knn.reference import NumpyPatchScorer

    rng = np.random.default_rng(1)
    shape = (4, 11)  # rows != cols: a row-major cell index of either alone would mix cells up
    pos = np.tile(grid_positions(shape), (6, 1))
    bank = rng.normal(size=(len(pos), 8)).astype(np.float32)
    queries = rng.normal(size=(44, 8)).astype(np.float32)
    qpos = grid_positions(shape)
    s = ScoringConfig(eta=5, position_window=1)
    ref = NumpyPatchScorer(bank, pos, shape, s)
    np.testing.assert_allclose(NumbaPatchScorer(bank, pos, shape, s).score(queries, qpos), ref.score(queries, qpos), rtol=1e-5)
    _, index = ref.search(queries, qpos)
    far = np.abs(pos[index] - qpos[:, None, :]).max(axis=2)
    assert far.max() <= 1  # every neighbour lies within the window, in rows and in columns


def test_camera_frames_come_from_the_bundle_geometry():
    from sclvi.edge.config import RuntimeConfig, camera_frames

    cfg = RuntimeConfig(bundle="b", cameras=[{"kind": "folder", "path": "x"},
                                             {"kind": "folder", "path": "y", "camera_id": "c1", "frame_size": [300, 200]}])
    assert [c.frame_size for c in camera_frames(cfg, (300, 200)).cameras] == [(300, 200), (300, 200)]
    assert camera_frames(cfg, None) is cfg
    with pytest.raises(ConfigError, match="c1: frame_size"):
        camera_frames(cfg, (640, 480))


def test_propose_roi_finds_the_part_and_tiles_it(tmp_path):
    from sclvi.roi_propose import propose_roi

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        img = np.full((240, 320, 3), 40, np.uint8) + rng.integers(0, 4, (240, 320, 3), dtype=np.uint8)
        img[60:140, 100:220] = 180 + rng.integers(0, 30, (80, 120, 3), dtype=np.uint8)  # the part
        img[10, 10] = 255  # a hot pixel and dust on the lens, in every frame, must not stretch the part's box
        img[220:224, 300:304] = 255
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    g = _dense({}).geometry
    p = propose_roi(paths, g, scale=1.0, margin=8)
    x, y, w, h = p.roi
    assert p.part_box == (100, 60, 120, 80)
    assert x <= 92 and y <= 52 and x + w >= 228 and y + h >= 148  # the part and its margin are inside
    assert w <= 120 + 16 + 16 and h <= 80 + 16 + 16 and g.tiles(w) and g.tiles(h)  # and not much more
    texture = tmp_path / "t.png"
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(texture)
    assert propose_roi([texture], g).roi == (0, 0, 320, 240)  # nothing stands out: the whole frame


def test_the_proposed_roi_is_one_training_can_use(tmp_path):
    """`sclvi roi` proposed a box around an 80-px-high part that the pretext task's 3x3 grid of 64-px patches
    (176 px) does not fit in: the training it told the user to run then failed."""
    from sclvi.errors import DataError
    from sclvi.roi_propose import propose_roi
    from sclvi.train.pretext import PretextSampler, grid_span

    cfg = _dense({})
    need = grid_span(cfg.geometry.large_patch, cfg.train.jitter_frac)
    img = np.full((240, 320, 3), 40, np.uint8)
    img[100:140, 100:220] = 200  # a wide, flat part: 120x40 px
    Image.fromarray(img).save(tmp_path / "a.png")
    p = propose_roi([tmp_path / "a.png"], cfg.geometry, margin=8, min_side=need)
    x, y, w, h = p.roi
    assert min(w, h) >= need and cfg.geometry.tiles(w) and cfg.geometry.tiles(h) and y <= 92 and y + h >= 148
    PretextSampler(1, (h, w), cfg.train.jitter_frac, cfg.train.svdd_shift_frac, 0).check_fits(cfg.geometry.large_patch)
    with pytest.raises(DataError, match="raise --scale"):
        propose_roi([tmp_path / "a.png"], cfg.geometry, scale=0.5, min_side=need)  # 120 px high at half scale


def test_train_on_an_roi_then_score_at_its_geometry(tmp_path):
    from sclvi.bundle import load_bundle
    from sclvi.cli import app
    from sclvi.engines import load_backend
    from sclvi.roi import read_input
    from sclvi.scorer import AnomalyScorer
    from sclvi.synthetic import write_synthetic

    runner = CliRunner()
    data = write_synthetic(tmp_path / "d", "object", size=208, n_train=4, n_test_good=1, n_test_defect=1, seed=0)
    proposed = runner.invoke(app, ["roi", str(data), "--figure", str(tmp_path / "roi.png")])
    assert proposed.exit_code == 0 and "proposed roi" in proposed.output and (tmp_path / "roi.png").stat().st_size > 0
    bad = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "x"), "--roi", "8,16,150,176", "--steps", "1"])
    assert bad.exit_code == 2 and "nearest that fits" in bad.output  # a one-line user error
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "b"), "--roi", "8,16,192,176",
                                 "--steps", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert manifest["config"]["geometry"]["frame"] == [208, 208] and manifest["config"]["geometry"]["roi"] == [8, 16, 192, 176]
    bundle = load_bundle(tmp_path / "b")
    assert bundle.mean.shape == (176, 192, 3) and bundle.bank_data("small")[2].grid == [37, 41]
    scorer = AnomalyScorer(bundle, load_backend(bundle, "torch"))
    image = next((data / "test").glob("*/*.png"))
    result = scorer.score([read_input(image, bundle.config.geometry)])[0]
    assert result.anomaly_map.shape == (176, 192) and np.isfinite(result.score)
    Image.new("RGB", (200, 208)).save(tmp_path / "wide.png")
    with pytest.raises(DataError, match="200x208 but the model was trained on 208x208"):
        read_input(tmp_path / "wide.png", bundle.config.geometry)


def test_the_line_inspects_the_roi_and_refuses_other_frame_sizes(tmp_path, synthetic_object, replay):
    from conftest import make_bundle
    from sclvi.dataset import read_dataset

    cfg = _dense({"frame": [96, 96], "roi": [16, 0, 64, 96]})
    bundle = make_bundle(tmp_path / "roi-bundle", cfg, read_dataset(synthetic_object).train)
    first = sorted(replay.iterdir())[0]
    Image.open(first).resize((288, 96)).save(replay / "02_wide.png")  # no frame_size in the camera config
    run_cfg = runtime_config(bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 10}],
                             image_threshold=1e-12, pixel_threshold=1e-12)  # every part NG: one region = the roi
    totals, verdicts = _run(run_cfg)
    bad = [v for v in verdicts if v["reason"] == "bad_frame"]
    assert len(bad) == 1 and totals["wrong_size"] == 1
    ng = [v for v in verdicts if v["verdict"] == "NG"]
    assert len(ng) == 6 and all(v["regions"][0]["box"] == [16, 0, 80, 96] for v in ng)  # camera pixels


def test_training_says_when_a_squash_distorts_the_images(tmp_path, caplog):
    from sclvi.roi import image_sizes
    from sclvi.train.trainer import _warn_on_squash

    for name, size in (("a.png", (300, 200)), ("b.png", (256, 256))):
        Image.new("RGB", size).save(tmp_path / name)
    sizes = image_sizes(sorted(tmp_path.glob("*.png")))
    assert set(sizes) == {(300, 200), (256, 256)}
    with caplog.at_level("WARNING"):
        _warn_on_squash(sizes, 256)
    assert "300x200 (e.g. a.png)" in caplog.text and "squashed to 256x256" in caplog.text
    caplog.clear()
    _warn_on_squash({(256, 256): tmp_path / "b.png"}, 256)
    assert caplog.text == ""
