"""Deployment: the example station config is valid, and `sclvi check` finds what would stop a line."""

from pathlib import Path

import genicam
import yaml
import zmq
from typer.testing import CliRunner

from sclvi.edge.endpoints import free_port
from sclvi.cli import app
from sclvi.deploy.preflight import passed, preflight
from sclvi.edge.config import load_runtime_config

VIKY = str(Path(genicam.__file__).parent / "viky.cti")
DEPLOY = Path(__file__).parent.parent / "deploy"


def free_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def station(bundle, folder, **extra):
    return {
        "bundle": str(bundle.path), "cameras": [{"kind": "folder", "path": str(folder)}],
        "image_threshold": 1.0, "pixel_threshold": 1.0, "backend": "torch", "threads_per_worker": 1,
        "telemetry_endpoint": free_endpoint(), "control_endpoint": free_endpoint(), **extra,
    }


def by_name(checks):
    return {c.name: c for c in checks}


def test_example_station_config_is_valid():
    cfg = load_runtime_config(DEPLOY / "line.example.yaml")
    assert cfg.cameras[0].kind == "genicam" and cfg.cameras[0].features["TriggerMode"] == "On"
    assert cfg.deadline_ms == 500
    unit = (DEPLOY / "sclvi.service").read_text()  # the unit gives the station a state folder for owed_dir
    assert "StateDirectory=sclvi/%i" in unit and cfg.owed_dir.startswith("/var/lib/sclvi/line3/")
    from sclvi.plc.config import load_bridge_config

    bridge = load_bridge_config(DEPLOY / "line.example.yaml")  # the station file's `bridge:` section
    assert bridge.verdict_endpoint == cfg.verdict_endpoint and bridge.cameras == [cfg.cameras[0].camera_id]
    assert bridge.not_inspected_rejects


def test_check_says_whether_the_plc_answers(random_bundle, synthetic_object):
    from sclvi.plc.modbus import ModbusServerPlc
    from sclvi.plc.registers import BLOCK

    port = int(free_endpoint().rsplit(":", 1)[1])
    cfg = station(random_bundle, synthetic_object / "train" / "good", verdict_endpoint=free_endpoint())
    cfg["bridge"] = {"verdict_endpoint": cfg["verdict_endpoint"], "mode": "modbus-client", "port": port,
                     "cameras": ["cam0"]}  # the default camera id
    down = by_name(preflight(load_runtime_config(overrides=cfg)))["PLC bridge"]
    assert not down.ok and "does not answer" in down.detail
    plc = ModbusServerPlc("127.0.0.1", port, BLOCK, 1)
    try:
        assert by_name(preflight(load_runtime_config(overrides=cfg)))["PLC bridge"].ok
    finally:
        plc.close()
    cfg["bridge"]["cameras"] = ["other"]
    assert "without a register block" in by_name(preflight(load_runtime_config(overrides=cfg)))["PLC bridge"].detail


def test_a_ready_station_passes(random_bundle, synthetic_object):
    checks = preflight(load_runtime_config(overrides=station(random_bundle, synthetic_object / "train" / "good")))
    assert passed(checks), [c for c in checks if not c.ok]
    c = by_name(checks)
    assert c["encoder backend"].detail.startswith("torch") and c["k-NN kernel"].detail == "numba (small) / numba (large)"
    assert "runtime config" in c["thresholds"].detail
    assert not c["owed verdicts"].ok and not c["owed verdicts"].fatal  # a warning: verdicts unacked at a stop are lost


def test_preflight_names_each_problem(random_bundle, tmp_path):
    busy = zmq.Context.instance().socket(zmq.PUB)
    taken = free_endpoint()
    busy.bind(taken)
    try:
        cfg = station(random_bundle, tmp_path / "no-such-folder", image_threshold=None, pixel_threshold=None,
                      control_endpoint=taken, ring_slots=4, backend="onnxruntime")
        cfg["cameras"][0]["max_frame_bytes"] = 2**50  # a petabyte per slot: no machine has that shared memory
        checks = preflight(load_runtime_config(overrides=cfg))
    finally:
        busy.close()
    c = by_name(checks)
    assert not passed(checks)
    assert not c["thresholds"].ok and "sclvi calibrate" in c["thresholds"].detail
    assert not c["encoder backend"].ok and "onnxruntime" in c["encoder backend"].detail  # no ONNX engines built
    assert not c["shared memory"].ok and "ring_slots" in c["shared memory"].detail
    assert not c["camera cam0"].ok and "does not exist" in c["camera cam0"].detail
    assert not c["control endpoint"].ok and c["telemetry endpoint"].ok


def test_genicam_camera_is_found_by_serial_or_listed(random_bundle, tmp_path):
    cam = {"kind": "genicam", "path": VIKY, "device": "1"}
    ok = preflight(load_runtime_config(overrides=station(random_bundle, tmp_path, cameras=[cam])))
    assert by_name(ok)["camera cam0"].ok and "serial 1" in by_name(ok)["camera cam0"].detail
    cam["device"] = "F0500123"
    bad = by_name(preflight(load_runtime_config(overrides=station(random_bundle, tmp_path, cameras=[cam]))))["camera cam0"]
    assert not bad.ok and "serials 0, 1, 2" in bad.detail
    cam["path"] = str(tmp_path / "missing.cti")
    gone = by_name(preflight(load_runtime_config(overrides=station(random_bundle, tmp_path, cameras=[cam]))))["camera cam0"]
    assert not gone.ok and ".cti file" in gone.detail


def test_check_command_exit_code(random_bundle, synthetic_object, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(station(random_bundle, synthetic_object / "train" / "good")))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(station(random_bundle, tmp_path / "nowhere")))
    runner = CliRunner()
    assert runner.invoke(app, ["check", str(good)]).exit_code == 0
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 1 and "FAIL" in result.output
