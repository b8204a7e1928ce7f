"""The control socket is local and private by default (issue 10): an ipc:// socket in a 0700 station folder,
0600 itself, never stolen by a second runtime, and `sclvi ctl` speaks to it."""

import stat
import time

import pytest
import yaml
from typer.testing import CliRunner

from sclvi.cli import app
from sclvi.edge.config import load_runtime_config
from sclvi.edge.supervisor import Runtime
from sclvi.errors import ConfigError
from test_edge_runtime import Collector, _start, replay, runtime_config  # noqa: F401 (fixture)


def test_default_control_socket_is_private_ipc_and_ctl_uses_it(tmp_path, monkeypatch, random_bundle, replay):
    from sclvi.deploy.preflight import _bindable

    monkeypatch.setenv("SCLVI_RUNTIME_DIR", str(tmp_path / "run"))
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 2, "loop": True,
                                          "max_frames": 40}], control_token="t" * 16)
    del cfg["control_endpoint"]  # the default
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_runtime_config(path).control_endpoint == f"ipc://{tmp_path / 'run' / 'control'}"
    plc = Collector(cfg["verdict_endpoint"])
    plc.start()
    t, result = _start(load_runtime_config(path).model_dump())
    try:
        sock = tmp_path / "run" / "control"
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700 and stat.S_IMODE(sock.stat().st_mode) == 0o600
        with pytest.raises(ConfigError, match="served by another sclvi runtime"):
            Runtime(load_runtime_config(path))  # would have unlinked the running station's socket
        assert sock.exists()
        check = _bindable("control endpoint", load_runtime_config(path).control_endpoint)
        assert not check.ok and "held by a running sclvi runtime" in check.detail
        runner = CliRunner()
        status = runner.invoke(app, ["ctl", str(path), "status", "--timeout-s", "60"])  # answered once workers are up
        assert status.exit_code == 0 and "\"running\": true" in status.output, status.output
        refused = runner.invoke(app, ["ctl", str(path), "pause"])  # no token
        assert refused.exit_code == 1 and "token" in refused.output
        paused = runner.invoke(app, ["ctl", str(path), "pause", "--token", "t" * 16])
        assert paused.exit_code == 0 and '"paused": true' in paused.output
        assert runner.invoke(app, ["ctl", str(path), "resume", "--token", "t" * 16]).exit_code == 0
    finally:
        t.join(120)
        plc.finish()
    assert result["frames_grabbed"] == 40
    assert _bindable("control endpoint", load_runtime_config(path).control_endpoint).ok  # released at exit


def test_an_ipc_path_too_long_for_a_unix_socket_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="at most 100 bytes"):
        load_runtime_config(overrides={"bundle": "b", "cameras": [{"kind": "folder", "path": "x"}],
                                       "control_endpoint": "ipc://" + "/d" * 60 + "/control"})
