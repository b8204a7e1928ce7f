"""Smoke versions of the benchmarks: tiny sizes, but the real scripts and their reports."""

import json

from sclvi.synthetic import write_synthetic


def test_quality_benchmark_smoke(tmp_path):
    from sclvi.benchmarks.quality import ETAS, main

    write_synthetic(tmp_path / "data", "object", size=176, n_train=6, n_test_good=3, n_test_defect=2, seed=0)
    report = main(["--data", str(tmp_path / "data"), "--sets", "object", "--protocol", "smoke",
                   "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    text = report.read_text()
    for row in ("none, eta 10", "jigsaw8, eta 10", *(f"scl12, eta {e}" for e in ETAS), "coreset 0.01", "window +-2"):
        assert row in text
    rows = json.loads((tmp_path / "out" / "quality-smoke.json").read_text())["results"][0]["rows"]
    assert all(0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pro"] <= 1.0 for r in rows if "error" not in r)
    assert (tmp_path / "out" / "roc-smoke-object.png").stat().st_size > 1000
    assert len(list((tmp_path / "out" / "heatmaps-smoke-object").glob("*.png"))) == 6


def test_knn_benchmark_smoke(tmp_path):
    from sclvi.benchmarks.knn import main

    main(["--sizes", "3000", "--queries", "64", "--kernels", "numpy", "numba", "--repeats", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "knn-cpu.json").read_text())["rows"]
    assert {r["kernel"] for r in rows} == {"numpy", "numba"} and all(r["ms"] > 0 for r in rows)
    assert "| numba | 3,000 |" in (tmp_path / "knn-cpu.md").read_text()
