"""Smoke versions of the benchmarks: tiny sizes, but the real scripts and their reports."""

import json

import numpy as np
from sclvi.synthetic import write_synthetic


def test_quality_benchmark_rows_stand_next_to_the_floors_over_seeds(tmp_path):
    from sclvi.benchmarks.quality import main

    write_synthetic(tmp_path / "data", "object", size=176, n_train=6, n_test_good=3, n_test_defect=2, seed=0)
    report = main(["--data", str(tmp_path / "data"), "--sets", "object", "--protocol", "smoke", "--seeds", "0,1",
                   "--tasks", "scl12,none", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                   "--improvements", "all"])
    data = json.loads((tmp_path / "out" / "quality-smoke.json").read_text())
    kinds = [(r["kind"], r["task"], r["seed"], r["variant"]) for r in data["rows"]]
    assert kinds == [("floor: raw pixels", None, None, None), ("floor: untrained encoder", None, 0, None),
                     ("trained", "scl12", 0, "default"), ("trained", "scl12", 1, "default"),
                     ("trained", "none", 0, "default"), ("trained", "none", 1, "default"),
                     ("trained", "scl12", 0, "paper loss and input"), ("trained", "scl12", 0, "synthetic defects only"),
                     ("trained", "scl12", 0, "frame photometric only"), ("trained", "scl12", 0, "flat mean only"),
                     ("trained", "scl12", 0, "per-pixel mean"), ("trained", "scl12", 0, "finish defects"),
                     ("trained", "scl12", 0, "anti-collapse 0.1"), ("trained", "scl12", 0, "anti-collapse 1.0"),
                     ("trained", "scl12", 0, "defect weight 0.5"), ("trained", "scl12", 0, "defect weight 2.0"),
                     ("trained", "scl12", 0, "no code aggregation"), ("trained", "scl12", 1, "no code aggregation"),
                     ("trained", "scl12", 0, "no image retrieval"), ("trained", "scl12", 1, "no image retrieval"),
                     ("trained", "scl12", 0, "no level normalisation"), ("trained", "scl12", 1, "no level normalisation"),
                     ("trained", "scl12", 0, "top-patch image score"), ("trained", "scl12", 1, "top-patch image score")]
    # each variant really trains what its label says
    variants = {r["variant"]: (r["photometric"], r["defect_weight"]) for r in data["rows"] if r["kind"] == "trained"}
    assert variants["paper loss and input"] == ("none", 0.0) and variants["frame photometric only"] == ("frame", 0.0)
    assert variants["synthetic defects only"] == ("none", 1.0) and variants["flat mean only"] == ("none", 0.0)
    assert variants["default"] == variants["per-pixel mean"] == ("frame", 1.0)
    assert variants["defect weight 0.5"] == ("frame", 0.5) and variants["defect weight 2.0"] == ("frame", 2.0)
    paper_mean = {"paper loss and input", "synthetic defects only", "frame photometric only", "per-pixel mean"}
    assert {r["variant"]: r["mean"] for r in data["rows"] if r["kind"] == "trained"} == {
        v: "image" if v in paper_mean else "flat" for v in variants}
    # the bank-only variant scores every seed's default model (copied, not retrained) with its bank rebuilt
    from sclvi.bundle import load_bundle

    work = tmp_path / "work" / "smoke" / "object"
    for seed in (0, 1):
        own, default = load_bundle(work / f"scl12-seed{seed}-no-code-aggregation"), load_bundle(work / f"scl12-seed{seed}-default")
        assert own.config.bank.neighbourhood == 1 and default.config.bank.neighbourhood == 3
        assert (own.path / "encoder.safetensors").read_bytes() == (default.path / "encoder.safetensors").read_bytes()
        assert own.manifest["training"] == default.manifest["training"]
        assert load_bundle(work / f"scl12-seed{seed}-no-image-retrieval").config.bank.retrieve == 0
        assert default.config.bank.retrieve == 50
        assert load_bundle(work / f"scl12-seed{seed}-no-level-normalisation").config.bank.level_norm == 0.0
        top = load_bundle(work / f"scl12-seed{seed}-top-patch-image-score")  # scoring only: the same model and bank
        assert (top.path / "encoder.safetensors").read_bytes() == (default.path / "encoder.safetensors").read_bytes()
        assert (top.path / "bank_small.sclvibank").read_bytes() == (default.path / "bank_small.sclvibank").read_bytes()
        assert default.config.bank.level_norm == 0.5
    assert load_bundle(work / "scl12-seed0-finish-defects").config.train.defect_kinds == ("paste", "scar", "blob", "finish")
    assert load_bundle(work / "scl12-seed0-default").config.train.defect_kinds == ("paste", "scar", "blob")
    assert [load_bundle(work / f"scl12-seed0-{v}").config.train.spread_weight
            for v in ("default", "anti-collapse-0.1", "anti-collapse-1.0")] == [0.0, 0.1, 1.0]
    flat = load_bundle(work / "scl12-seed0-default").mean
    assert np.ptp(flat, axis=(0, 1)).max() == 0 and np.ptp(load_bundle(work / "scl12-seed0-per-pixel-mean").mean, axis=(0, 1)).max() > 1
    scl12 = [r for r in data["rows"] if r["task"] == "scl12" and r["variant"] == "default"]
    assert all(0.0 <= r["pretext_acc"] <= 1.0 and r["code_rank32"] > 0 for r in scl12)
    assert all(r["pretext_acc"] is None for r in data["rows"] if r["task"] == "none")
    (summary,) = [e for e in data["summary"] if e["task"] == "scl12" and e["variant"] == "default"]
    assert summary["n"] == 2 and summary["image_auroc"] == sum(r["image_auroc"] for r in scl12) / 2
    floor = max(r["image_auroc"] for r in data["rows"] if r["kind"].startswith("floor"))
    assert abs(summary["over_best_floor"] - (summary["image_auroc"] - floor)) < 1e-12
    text = report.read_text()
    assert "| floor: raw pixels |" in text and "| trained, scl12, default (2 seeds) |" in text
    assert "| trained, scl12, synthetic defects only (1 seed) |" in text
    assert (tmp_path / "out" / "training-curve-smoke-object.png").stat().st_size > 1000
    # per defect type: the shares of the defect pixels add up, and the trained column is the mean over seeds
    shares = {d: e["pixel_share"] for d, e in scl12[0]["per_defect"].items()}
    assert abs(sum(shares.values()) - 1) < 1e-9 and "good" not in shares
    table = text.split("| defect | share |")[1].split("\n\n")[0]
    assert "| defect | share | floor: raw pixels | floor: untrained encoder | trained, scl12 | trained, none |" in text
    d = next(d for d in shares if shares[d] > 0)
    mean_img = sum(r["per_defect"][d]["image_auroc"] for r in scl12) / 2
    mean_px = sum(r["per_defect"][d]["pixel_auroc"] for r in scl12) / 2
    row = next(line for line in table.splitlines() if line.startswith(f"| {d} |"))
    assert row.split(" | ")[1] == f"{100 * shares[d]:.1f} %" and f"{100 * mean_img:.1f} / {100 * mean_px:.1f}" == row.split(" | ")[4]
    _merge_keeps_the_other_sets_and_says_when_they_were_measured(tmp_path, data)


def _merge_keeps_the_other_sets_and_says_when_they_were_measured(tmp_path, earlier):
    """--merge (part of the test above, reusing its report): the earlier report's rows of the other sets join
    unchanged, stamped with that report's date; a set measured again is not kept; another protocol's report
    and a file that is not a report are refused before any work."""
    import pytest
    import typer
    from sclvi.benchmarks.quality import main

    write_synthetic(tmp_path / "data", "texture", size=176, n_train=4, n_test_good=2, n_test_defect=1, seed=0)
    old = str(tmp_path / "out" / "quality-smoke.json")
    common = ["--data", str(tmp_path / "data"), "--protocol", "smoke", "--seeds", "0", "--tasks", "none",
              "--work", str(tmp_path / "work")]
    with pytest.raises(typer.BadParameter, match="no rows of a set"):  # every set of it is measured again
        main([*common, "--sets", "object", "--out", str(tmp_path / "x"), "--merge", old])
    with pytest.raises(typer.BadParameter, match="another protocol"):
        main([*common[:2], "--protocol", "quick", *common[4:], "--sets", "texture", "--out", str(tmp_path / "y"), "--merge", old])
    with pytest.raises(typer.BadParameter, match="not a quality report"):
        main([*common, "--sets", "texture", "--out", str(tmp_path / "z"), "--merge", old.replace(".json", ".md")])
    report = main([*common, "--sets", "texture", "--out", str(tmp_path / "two"), "--merge", old])
    rows = json.loads((tmp_path / "two" / "quality-smoke.json").read_text())["rows"]
    n = len(earlier["rows"])
    assert [r["set"] for r in rows] == ["object"] * n + ["texture"] * 3
    kept, fresh = rows[:n], rows[n:]
    assert [{k: v for k, v in r.items() if not k.startswith("measured")} for r in kept] == earlier["rows"]
    assert {r["measured"] for r in kept} == {earlier["machine"]["date"]} and not any("measured" in r for r in fresh)
    object_part, texture_part = report.read_text().split("## object")[1].split("## texture")
    assert f"Measured {earlier['machine']['date']} on " in object_part and "kept from an earlier report" in object_part
    assert "Measured in this run" in texture_part and "kept from" not in texture_part.split("## Machine")[0]
    _a_label_names_a_side_run_without_touching_the_main_report(tmp_path)


def _a_label_names_a_side_run_without_touching_the_main_report(tmp_path):
    """--label (part of the test above, on its cached models): a side run into the main report's folder writes
    every file under its own name and leaves the main report's files as they were; a label that is not a
    plain file-name part is refused before any work."""
    import pytest
    import typer
    from sclvi.benchmarks.quality import main

    out = tmp_path / "out"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    common = ["--data", str(tmp_path / "data"), "--sets", "object", "--protocol", "smoke", "--seeds", "0",
              "--tasks", "none", "--work", str(tmp_path / "work"), "--out", str(out)]
    for bad in ("Tasks", "a/b", "-x", "a--b"):
        with pytest.raises(typer.BadParameter, match="lower-case letters"):
            main([*common, "--label", bad])
    report = main([*common, "--label", "tasks-none"])
    assert report == out / "quality-tasks-none-smoke.md"
    rows = json.loads((out / "quality-tasks-none-smoke.json").read_text())["rows"]
    assert [(r["kind"], r["task"], r["seed"]) for r in rows][2:] == [("trained", "none", 0)]
    assert (out / "training-curve-tasks-none-smoke-object.png").stat().st_size > 1000
    assert any((out / "heatmaps-tasks-none-smoke-object").iterdir())
    assert "`heatmaps-tasks-none-smoke-object/`" in report.read_text()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.relative_to(out) in before} == before


def test_learning_curve_trains_one_model_per_budget_next_to_the_floors(tmp_path):
    from sclvi.benchmarks.quality import main
    from sclvi.bundle import load_bundle

    write_synthetic(tmp_path / "data", "object", size=176, n_train=6, n_test_good=3, n_test_defect=2, seed=0)
    report = main(["--data", str(tmp_path / "data"), "--sets", "object", "--protocol", "smoke", "--steps", "1,2",
                   "--seeds", "0", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "quality-steps-smoke.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["floor: raw pixels", "floor: untrained encoder", "trained", "trained"]
    assert [(r["budget"], r["steps"]) for r in rows[2:]] == [(1, 1), (2, 2)]
    # a budget other than the default trains that many steps with the early stop off; the default is the default model
    short = load_bundle(tmp_path / "work" / "smoke" / "object" / "scl12-seed0-steps1").config.train
    default = load_bundle(tmp_path / "work" / "smoke" / "object" / "scl12-seed0-default").config.train
    assert (short.steps, short.early_stop_patience) == (1, 0) and default.early_stop_patience > 0
    assert all(0.0 <= r["image_auroc"] <= 1.0 and r["pretext_acc"] is not None for r in rows[2:])
    assert "| trained, budget 1 | 1 | 0 |" in report.read_text()
    assert (tmp_path / "out" / "quality-steps-smoke.png").stat().st_size > 1000


def test_the_bench_reuses_a_trained_encoder_when_only_the_bank_settings_change(tmp_path):
    from sclvi.benchmarks.protocols import protocol_config
    from sclvi.benchmarks.quality import _trained_bundle
    from sclvi.bundle import WEIGHTS

    data = write_synthetic(tmp_path / "data", "object", size=176, n_train=6, n_test_good=1, n_test_defect=1, seed=0)
    cfg = protocol_config("smoke", "scl12")  # bank of 4 images
    first, train_s = _trained_bundle(cfg, data, tmp_path / "b")
    weights = first.manifest["files"][WEIGHTS]
    written = (first.path / WEIGHTS).stat().st_mtime_ns  # training writes it again, even with equal weights
    per_image = len(first.bank("small")) // 4
    every = cfg.model_copy(update={"bank": cfg.bank.model_copy(update={"max_images": None})})
    again, _ = _trained_bundle(every, data, tmp_path / "b")
    assert (again.path / WEIGHTS).stat().st_mtime_ns == written  # not retrained
    assert again.config.bank.max_images is None and len(again.bank("small")) == 6 * per_image
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 1})})
    retrained, _ = _trained_bundle(other, data, tmp_path / "b")
    assert retrained.manifest["files"][WEIGHTS] != weights


def test_quality_ablation_smoke(tmp_path):
    from sclvi.benchmarks.quality import ETAS, main

    write_synthetic(tmp_path / "data", "object", size=176, n_train=6, n_test_good=3, n_test_defect=2, seed=0)
    report = main(["--data", str(tmp_path / "data"), "--sets", "object", "--protocol", "smoke", "--ablation",
                   "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    text = report.read_text()
    for row in ("none, eta 10", "jigsaw8, eta 10", *(f"scl12, eta {e}" for e in ETAS), "coreset 0.01", "window +-2"):
        assert row in text
    rows = json.loads((tmp_path / "out" / "quality-ablation-smoke.json").read_text())["results"][0]["rows"]
    assert all(0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pro"] <= 1.0 for r in rows if "error" not in r)
    assert (tmp_path / "out" / "roc-smoke-object.png").stat().st_size > 1000
    assert len(list((tmp_path / "out" / "heatmaps-smoke-object").glob("*.png"))) == 6


def test_knn_benchmark_smoke(tmp_path):
    from sclvi.benchmarks.knn import main

    main(["--sizes", "3000", "--queries", "64", "--kernels", "numpy,numba,window1", "--kernels", "ivf", "--repeats", "1",
          "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "knn-cpu.json").read_text())["rows"]
    assert {r["kernel"] for r in rows} == {"numpy", "numba", "window1", "ivf"} and all(r["ms"] > 0 for r in rows)
    assert 0.0 < next(r for r in rows if r["kernel"] == "ivf")["recall_at_eta"] <= 1.0
    window = next(r for r in rows if r["kernel"] == "window1")
    assert window["speedup_vs_full"] > 0
    assert "| numba | 3,000 |" in (tmp_path / "knn-cpu.md").read_text()


def test_latency_benchmark_smoke(tmp_path):
    """Tiny sizes through the real runtime: every stage timed, the peer timed, a histogram written."""
    from sclvi.benchmarks.latency import main
    from sclvi.benchmarks.line import STAGES

    # a squashed square, and native 160x120 camera frames inspected whole at scale 0.8 (aspect kept)
    report = main(["--presets", "dense-lite", "--backends", "onnxruntime", "--geometries", "96,160x120@0.8",
                   "--small-stride", "16", "--train-images", "3", "--replay-images", "8", "--frames", "6",
                   "--compute-frames", "2", "--warmup", "1", "--peer-frames", "1", "--knn-modes", "1/1.0",
                   "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "latency-cpu.json").read_text())["rows"]
    assert [(r["geometry"], r["frame"], r["input"]) for r in rows] == [("96", [96, 96], [96, 96]),
                                                                      ("160x120@0.8", [160, 120], [128, 96])]
    for row in rows:
        assert row["window"] == 1 and row["coreset"] == 1.0 and row["retrieve"] is None  # 3 bank images, K = 50
        assert row["verdicts"] == row["grabbed"] == 14  # paced and free-running runs, 7 frames each
        assert row["verdict_counts"].get("NOT_INSPECTED (bad_frame)", 0) == 0  # native frames are inspected
        assert set(row["stages_ms"]) == set(STAGES)
        for s in row["stages_ms"].values():
            assert 0 <= s["p50"] <= s["p95"] <= s["p99"]
        total = row["stages_ms"]["total"]["p50"]
        assert row["stages_ms"]["embed"]["p50"] < total and row["stages_ms"]["knn"]["p50"] < total
        assert row["throughput_fps"] > 0 and row["peer_ratio"] > 0
    text = report.read_text()
    assert "| dense-lite | onnxruntime | 96 | 96x96 | numba | +-1 | 1 |" in text and "| off |" in text
    assert "| dense-lite | onnxruntime | 160x120@0.8 | 128x96 | numba | +-1 | 1 |" in text
    assert (tmp_path / "latency-cpu.png").stat().st_size > 1000


def test_latency_benchmark_times_a_given_bundle_on_its_test_images(tmp_path):
    """--bundle/--data: a copy of the bundle gets the row's k-NN settings and thresholds from training images
    outside its bank; the camera replays the set's test images at their own sizes (the ring holds the largest)."""
    from PIL import Image

    from sclvi.benchmarks.common import untrained_bundle
    from sclvi.benchmarks.latency import main
    from sclvi.benchmarks.line import bench_config
    from sclvi.bundle import load_bundle
    from sclvi.dataset import read_dataset
    from sclvi.memory_bank import bank_images

    data = write_synthetic(tmp_path / "data", "texture", size=96, n_train=9, n_test_good=3, n_test_defect=1, seed=0)
    late = sorted((data / "test").rglob("*.png"))[-1]
    Image.open(late).resize((144, 120)).save(late)  # a larger frame after smaller ones
    cfg = bench_config("dense-lite", 96, 16)
    cfg = cfg.model_copy(update={"bank": cfg.bank.model_copy(update={"max_images": 4})})
    train = read_dataset(data).train
    source = untrained_bundle(tmp_path / "model", cfg, train)
    before = (source.path / "bundle.json").read_bytes()
    report = main(["--bundle", str(source.path), "--data", str(data), "--backends", "onnxruntime",
                   "--knn-modes", "none/1.0/numpy/2", "--replay-images", "7", "--frames", "8", "--compute-frames", "2",
                   "--warmup", "1", "--no-peer", "--workers", "2", "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "latency-cpu.json").read_text())["rows"]
    assert (row["preset"], row["geometry"], row["knn"], row["window"]) == ("dense-lite", "96", "numpy", None)
    assert row["retrieve"] == 2  # the mode's K: each frame searched among 2 of the 4 bank images
    assert row["bank_codes"] == source.manifest["banks"]["small"]["count"] + source.manifest["banks"]["large"]["count"]
    assert row["verdicts"] == row["grabbed"] == 18 and not any("NOT_INSPECTED" in k for k in row["verdict_counts"])
    timed = load_bundle(tmp_path / "work" / "dense-lite-none_1.0_numpy_2-96" / "bundle")
    assert timed.config.scoring.knn == "numpy" and timed.config.scoring.position_window is None
    assert timed.config.bank.retrieve == 2 and timed.config.bank.max_images == 4
    assert "calibration" in timed.manifest and "onnx" in timed.manifest["engines"]
    assert (source.path / "bundle.json").read_bytes() == before  # the given bundle is left as it was
    held_out = [p for p in train if p not in bank_images(train, 4, cfg.bank.seed)]
    assert timed.manifest["calibration"]["n_good"] == len(held_out) == 5
    assert "trained bundle" in report.read_text() and "random weights" not in report.read_text()
    assert "2 inference workers" in report.read_text()  # and with two workers every frame got its verdict (above)


def test_soak_benchmark_counts_one_verdict_per_frame(tmp_path):
    from sclvi.benchmarks.soak import main

    report = main(["--frames", "60", "--preset", "dense-lite", "--image-size", "96", "--small-stride", "16",
                   "--train-images", "3", "--replay-images", "8", "--rate-hz", "30", "--work", str(tmp_path / "work"),
                   "--out", str(tmp_path)])
    data = json.loads((tmp_path / "soak-cpu.json").read_text())
    assert data["frames_grabbed"] == data["verdicts"] == 60 and data["gaps"] == []
    assert sum(data["counts"].values()) == 60
    assert "| equal, no sequence gap | yes |" in report.read_text()


def test_quality_benchmark_families_smoke_floors_seeds_and_merge(tmp_path):
    """Presets side by side next to the floors, per seed with pretext accuracy; a preset measured again replaces
    its rows, and rows of the earlier format (no floors) are dropped rather than shown beside the new ones."""
    from sclvi.benchmarks.quality import main

    write_synthetic(tmp_path / "data", "texture", size=176, n_train=6, n_test_good=3, n_test_defect=2, seed=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "quality-families-smoke.json").write_text(json.dumps(
        {"rows": [{"set": "texture", "preset": "paper", "image_auroc": 0.5, "gmac_per_frame": 1.0}]}))
    common = ["--data", str(tmp_path / "data"), "--sets", "texture", "--protocol", "smoke",
              "--work", str(tmp_path / "work"), "--out", str(out)]
    main(common + ["--families", "lite,dense-lite", "--seeds", "0,1"])
    report = main(common + ["--families", "dense-lite", "--seeds", "0"])  # measured again: seed 0 replaced
    rows = json.loads((out / "quality-families-smoke.json").read_text())["rows"]
    trained = sorted((r["variant"], r["seed"]) for r in rows if r["kind"] == "trained")
    assert trained == [("dense-lite", 0), ("dense-lite", 1), ("lite", 0), ("lite", 1)]
    assert sorted(r["kind"] for r in rows if r["kind"] != "trained") == ["floor: raw pixels", "floor: untrained encoder"]
    assert all(0.0 <= r["image_auroc"] <= 1.0 for r in rows)
    assert all(r["gmac_per_frame"] > 0 and r["pretext_acc"] is not None for r in rows if r["kind"] == "trained")
    text = report.read_text()
    assert "| floor: raw pixels | 1 |" in text and "| lite | 2 |" in text and "| dense-lite | 2 |" in text
    assert "| paper |" not in text
    # the floors head the table even when the presets kept from the first run were measured before them
    assert text.index("| floor: raw pixels |") < text.index("| lite | 2 |")
    floor = max(r["image_auroc"] for r in rows if r["kind"] != "trained")
    lite = np.mean([r["image_auroc"] for r in rows if r.get("variant") == "lite"])
    assert f"{100 * (lite - floor):+.1f} |" in text.split("| lite | 2 |")[1].split("\n")[0]


def test_faults_benchmark_smoke(tmp_path):
    """Two faults for real: the report counts what the bridge got, and nothing is lost."""
    from sclvi.benchmarks.faults import main

    report = main(["--faults", "none,acquisition-kill", "--frames", "9", "--rate", "8", "--image-size", "96",
                   "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    rows = {r["fault"]: r for r in json.loads((tmp_path / "faults-cpu.json").read_text())["rows"]}
    assert rows["none"]["grabbed"] == rows["none"]["delivered"] == 9 and rows["none"]["lost"] == 0
    killed = rows["acquisition-kill"]
    assert killed["lost"] == 0 and killed["restarts"]["acquisition_restarts"] == 1
    assert killed["delivered"] == killed["grabbed"] >= 9 - 1  # a frame half-read when killed is never grabbed
    assert "| acquisition-kill | folder |" in report.read_text()


def test_knn_quality_benchmark_compares_each_mode_with_exact_search(tmp_path):
    from sclvi.benchmarks.knn_quality import ALIGNED_RATIOS, ALIGNED_RETRIEVE, GLOBAL_RATIOS, IVF, IVF_NPROBES, main

    write_synthetic(tmp_path / "data", "object", size=176, n_train=6, n_test_good=3, n_test_defect=2, seed=0)
    args = ["--data", str(tmp_path / "data"), "--sets", "object", "--protocol", "smoke", "--seeds", "0",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    # an earlier report: its rows of other sets stay, its rows of the sets run now are replaced
    earlier = {"set": "elsewhere", "seed": 0, "window": None, "coreset": 1.0, "kernel": "numba", "nprobe": None,
               "retrieve": None, "bank_codes": 7, "image_auroc": 0.5, "pixel_auroc": None, "score_ms_per_image": 1.0}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "quality-knn-modes-smoke.json").write_text(json.dumps({"rows": [
        earlier, {**earlier, "set": "object", "bank_codes": 12345}]}))
    report = main(args)
    rows = json.loads((tmp_path / "out" / "quality-knn-modes-smoke.json").read_text())["rows"]
    assert rows[-1] == earlier and "| elsewhere | numba |" in report.read_text()
    rows = [r for r in rows if r["set"] == "object"]
    assert 12345 not in [r["bank_codes"] for r in rows]
    modes = [(r["coreset"], r["kernel"], r["nprobe"], r["retrieve_set"]) for r in rows]
    aligned = rows[0]["window"] is not None
    assert modes == [(c, "numba", None, None) for c in (ALIGNED_RATIOS if aligned else GLOBAL_RATIOS)] + (
        [(1.0, "numba", None, k) for k in ALIGNED_RETRIEVE] if aligned else [(1.0, IVF, n, None) for n in IVF_NPROBES])
    assert all(0.0 <= r["image_auroc"] <= 1.0 for r in rows)
    assert rows[0]["bank_codes"] > rows[len(ALIGNED_RATIOS if aligned else GLOBAL_RATIOS) - 1]["bank_codes"]  # smaller
    assert "| object | numba |" in report.read_text() and "+0.00 |" in report.read_text()  # exact vs itself
    # it scored the quality benchmark's cached default model, where `sclvi bench quality` keeps it
    models = tmp_path / "work" / "smoke" / "object"
    assert [p.name for p in models.iterdir()] == ["scl12-seed0-default"]
    # at the line's stride: the same model, its bank rebuilt at that stride in a cached copy
    fine = main(args + ["--small-stride", "8"])
    assert fine.name == "quality-knn-modes-smoke-stride8.md"
    rows8 = json.loads((tmp_path / "out" / "quality-knn-modes-smoke-stride8.json").read_text())["rows"]
    assert rows8[0]["small_stride"] == 8 and rows[0]["small_stride"] == 16
    assert rows8[0]["bank_codes"] > rows[0]["bank_codes"]  # a finer grid of the same images
    assert sorted(p.name for p in models.iterdir()) == ["scl12-seed0-default", "scl12-seed0-default-stride8"]
    from sclvi.bundle import load_bundle

    assert (models / "scl12-seed0-default-stride8" / "encoder.safetensors").read_bytes() == \
        (models / "scl12-seed0-default" / "encoder.safetensors").read_bytes()
    assert load_bundle(models / "scl12-seed0-default").config.geometry.small_stride == 16  # the cache left as it was


def test_aspect_benchmark_compares_squashed_and_native_geometry_on_mixed_sizes(tmp_path):
    import shutil

    from sclvi.benchmarks.aspect import main

    data = write_synthetic(tmp_path / "a", "texture", size=96, n_train=3, n_test_good=2, n_test_defect=1, seed=0)
    wide = write_synthetic(tmp_path / "b", "texture", size=160, n_train=2, n_test_good=1, n_test_defect=1, seed=1)
    for src in wide.rglob("*.png"):  # a second image size, as magnetic_tile has many
        dst = data / src.relative_to(wide)
        shutil.copy(src, dst.with_name("w" + dst.name))
    report = main(["--data", str(tmp_path / "a"), "--sets", "texture", "--bank-images", "4", "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "quality-aspect-cpu.json").read_text())["rows"]
    assert [r["geometry"] for r in rows] == ["squash", "native"] and rows[0]["sizes"].startswith("2 image sizes")
    # squash: 29 x 29 patches of each of the 4 bank images; native keeps each image's own grid
    assert rows[0]["bank_codes"] == 4 * 29 * 29 and rows[1]["bank_codes"] != rows[0]["bank_codes"]
    assert all(0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pixel_auroc"] <= 1.0 for r in rows)
    assert "| raw pixels | native |" in report.read_text()
    # with a (here untrained) dense bundle: its encoder at both geometries, two scales from one pass per image
    from conftest import TINY_ENCODER, make_bundle
    from sclvi.config import build_config

    cfg = build_config("dense-lite", {"encoder": TINY_ENCODER, "geometry": {"image_size": 96, "small_stride": 8, "large_stride": 16}})
    make_bundle(tmp_path / "dense", cfg)
    report = main(["--data", str(tmp_path / "a"), "--sets", "texture", "--bank-images", "4", "--out", str(tmp_path / "out2"),
                   "--bundle", f"texture={tmp_path / 'dense'}", "--label", "with-bundle"])
    # a labelled run names its files by the label, as `bench quality --label` does
    assert report.name == "quality-aspect-with-bundle-cpu.md" and not (tmp_path / "out2" / "quality-aspect-cpu.md").exists()
    rows = json.loads((tmp_path / "out2" / "quality-aspect-with-bundle-cpu.json").read_text())["rows"]
    assert [(r["kind"], r["geometry"]) for r in rows] == [("raw pixels", "squash"), ("raw pixels", "native"),
                                                          ("trained encoder", "squash"), ("trained encoder", "native")]
    # 256 px squashed: 29 x 29 small patches (32 px, stride 8) and 13 x 13 large ones (64 px, stride 16) per image
    assert rows[2]["bank_codes"] == 4 * (29 * 29 + 13 * 13) and rows[3]["bank_codes"] != rows[2]["bank_codes"]
    assert all(0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pixel_auroc"] <= 1.0 for r in rows[2:])
    assert "| trained encoder | native |" in report.read_text() and str(tmp_path / "dense") in report.read_text()
    import pytest
    import typer

    with pytest.raises(typer.BadParameter, match="dense-family"):  # a per-patch encoder cannot take any image size
        make_bundle(tmp_path / "lite", build_config("lite", {"encoder": TINY_ENCODER, "geometry": {"image_size": 96}}))
        main(["--data", str(tmp_path / "a"), "--sets", "texture", "--bank-images", "4", "--out", str(tmp_path / "out3"),
              "--bundle", str(tmp_path / "lite")])


def test_each_floor_is_cached_under_the_settings_it_reads(tmp_path, monkeypatch):
    """The raw-pixel floor reads no encoder and no `preprocess.mean`: changing the mean recomputes the untrained
    floor only, and asking again with nothing changed recomputes neither."""
    import sclvi.benchmarks.common as common
    import sclvi.floors as floors
    from sclvi.benchmarks import quality
    from sclvi.benchmarks.protocols import PROTOCOLS
    from sclvi.bundle import load_bundle
    from sclvi.dataset import read_dataset

    write_synthetic(tmp_path / "data", "object", size=176, n_train=4, n_test_good=2, n_test_defect=1, seed=0)
    ds = read_dataset(tmp_path / "data" / "object")
    calls: list[str] = []
    raw, untrained = floors.raw_pixel_floor, common.untrained_bundle
    monkeypatch.setattr(floors, "raw_pixel_floor", lambda *a: calls.append("raw") or raw(*a))
    monkeypatch.setattr(common, "untrained_bundle", lambda *a: calls.append("untrained") or untrained(*a))
    work = tmp_path / "work"
    flat = quality.floor_rows("object", ds, "smoke", None, work)
    assert calls == ["raw", "untrained"] and np.ptp(load_bundle(work / "object" / "untrained").mean, axis=(0, 1)).max() == 0
    monkeypatch.setitem(PROTOCOLS, "smoke", {**PROTOCOLS["smoke"], "preprocess": {"mean": "image"}})
    per_pixel = quality.floor_rows("object", ds, "smoke", None, work)
    assert calls == ["raw", "untrained", "untrained"] and per_pixel[0] == flat[0]
    assert np.ptp(load_bundle(work / "object" / "untrained").mean, axis=(0, 1)).max() > 1
    assert quality.floor_rows("object", ds, "smoke", None, work) == per_pixel and len(calls) == 3
