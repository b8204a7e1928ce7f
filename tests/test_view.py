"""The operator view: a real runtime, the real web app, a real headless Chromium (Debian's package)."""

import shutil
import threading
import time

import httpx
import pytest

from sclvi.edge.config import load_runtime_config
from sclvi.edge.supervisor import Runtime
from sclvi.view.app import BackgroundView
from sclvi.edge.endpoints import free_ports
from test_edge_runtime import Collector, replay, runtime_config  # noqa: F401 (fixture)

TOKEN = "operator-token-0123456789"


def _station(random_bundle, replay, frames, rate):
    """The station's config (dict and loaded) and a port for its view, all four ports taken at once."""
    *ports, view_port = free_ports(4)
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": rate, "loop": True,
                                          "max_frames": frames}], ports, heartbeat_s=0.2, preview_hz=50,
                         control_token=TOKEN)
    return cfg, load_runtime_config(overrides=cfg), view_port


def test_view_api_refuses_bad_commands_and_a_wrong_token(random_bundle, replay):
    cfg_dict, cfg, view_port = _station(random_bundle, replay, 12, 4)
    plc = Collector(cfg_dict["verdict_endpoint"])
    plc.start()
    rt = Runtime(cfg)
    t = threading.Thread(target=rt.run, daemon=True)
    t.start()
    view = BackgroundView(cfg, port=view_port)
    try:
        with httpx.Client(base_url=view.url, timeout=10) as http:
            assert "<title>SCL-VI station</title>" in http.get("/").text
            end = time.time() + 30
            while not http.get("/api/state").json()["parts"] and time.time() < end:
                time.sleep(0.1)
            part = http.get("/api/state").json()["parts"][0]
            assert http.post("/api/command", json={"cmd": "stop"}).status_code == 400  # not a view command
            assert http.post("/api/command", content=b"nope").status_code == 400
            r = http.post("/api/command", json={"cmd": "pause", "token": "wrong-token-xxxxxxxx"})
            assert r.status_code == 403 and "token" in r.json()["error"]
            assert not rt.shared.paused.is_set()
            assert part["image"].startswith("data:image/jpeg;base64,") and len(part["image"]) > 1000
            assert part["verdict"] in ("OK", "NG") and part["frame_size"][0] > 0
    finally:
        t.join(60)
        view.close()
        plc.finish()


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs Debian's chromium-driver (.ci/run installs it)")
def test_operator_page_shows_each_verdict_within_a_second_counts_like_the_bridge_and_pauses(random_bundle, replay):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    cfg_dict, cfg, view_port = _station(random_bundle, replay, 24, 3)
    arrivals = {}
    plc = Collector(cfg_dict["verdict_endpoint"])
    plc.start()
    rt = Runtime(cfg)
    t = threading.Thread(target=rt.run, daemon=True)
    view = BackgroundView(cfg, port=view_port)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        browser.get(view.url)
        t.start()
        delays = []
        end = time.time() + 60
        while len(delays) < 3 and time.time() < end:  # the page shows new parts as the bridge gets them
            for v in list(plc.verdicts):
                arrivals.setdefault(v["seq"], time.monotonic())
            shown = set(browser.execute_script("return [...document.querySelectorAll('.part')].map(e => +e.dataset.seq)"))
            for seq in shown & set(arrivals):
                if seq not in [d[0] for d in delays]:
                    delays.append((seq, time.monotonic() - arrivals[seq]))
            time.sleep(0.02)
        assert len(delays) >= 3 and max(d for _, d in delays) < 1.0, delays
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "pause").click()
        end = time.time() + 10
        while not rt.shared.paused.is_set() and time.time() < end:
            time.sleep(0.05)
        assert rt.shared.paused.is_set()  # pause on the page stops inspection ...
        grabbed = rt.shared.seq[0].value  # frames grabbed before the pause may still be inspected
        end = time.time() + 15
        while sum(v["seq"] > grabbed for v in plc.verdicts) < 3 and time.time() < end:
            time.sleep(0.05)
        after = [v for v in plc.verdicts if v["seq"] > grabbed]
        assert len(after) >= 3 and all(v["verdict"] == "NOT_INSPECTED" and v["reason"] == "paused" for v in after)
        browser.find_element(By.ID, "resume").click()
        t.join(90)
        time.sleep(1.0)  # the last heartbeat
        counts = browser.execute_script("return Object.fromEntries(['ok', 'ng', 'ni'].map(k => [k, +document.getElementById(k).textContent]))")
        verdicts = plc.finish()
        assert counts["ok"] == sum(v["verdict"] == "OK" for v in verdicts)  # ... and the counters match the bridge's
        assert counts["ng"] == sum(v["verdict"] == "NG" for v in verdicts)
        assert counts["ni"] == sum(v["verdict"] == "NOT_INSPECTED" for v in verdicts) and counts["ni"] > 0
        assert browser.find_element(By.ID, "state").text in ("inspecting", "PAUSED")
        # the latency panel: per-stage last / p50 / p95 / max over the previewed parts, total among them
        cells = browser.execute_script("return [...document.querySelectorAll('#latency tr[data-stage=total] td')].map(e => e.textContent)")
        p50, p95, worst = (float(c) for c in cells[2:5])
        assert cells[0] == "total" and 0 < p50 <= p95 <= worst
        assert int(browser.find_element(By.ID, "latency_n").text) >= 3
    finally:
        browser.quit()
        view.close()


def test_latency_summary_gives_each_stage_its_tail_not_just_the_last_part():
    from sclvi.view.feed import TelemetryFeed

    feed = TelemetryFeed("ipc:///nonexistent")  # never started: fed by hand
    for i, total in enumerate([10.0, 12.0, 11.0, 50.0, 13.0]):
        feed._take(b"preview", {"seq": i, "verdict": "OK", "jpeg": b"", "latency_ms": {"embed": total / 2, "total": total}})
    feed._take(b"preview", {"seq": 5, "verdict": "NOT_INSPECTED", "jpeg": b""})  # no latency: not a sample
    lat = feed.snapshot()["latency"]
    assert lat["n"] == 5 and [v for _, v in lat["trend"]] == [10.0, 12.0, 11.0, 50.0, 13.0]
    total = lat["stages"]["total"]
    assert total["last"] == 13.0 and total["p50"] == 12.0 and total["max"] == 50.0 and 13.0 < total["p95"] < 50.0
    assert lat["stages"]["embed"]["max"] == 25.0
