"""ZeroMQ CURVE on the sockets that leave the box: real sockets on 127.0.0.1, real keys."""

import json
import stat
import threading
import time

import pytest
import zmq

from sclvi.edge.config import load_runtime_config
from sclvi.edge.curve import CurveConfig, as_client, make_keys
from sclvi.edge.listener import VerdictListener
from sclvi.edge.supervisor import Runtime
from sclvi.errors import ConfigError
from test_edge_runtime import replay, runtime_config  # noqa: F401 (fixture)


@pytest.fixture()
def keys(tmp_path):
    make_keys(tmp_path / "keys")
    return tmp_path / "keys"


def test_keys_are_private_and_never_overwritten(keys):
    for party in ("station", "bridge", "operator"):
        assert stat.S_IMODE((keys / f"{party}.key_secret").stat().st_mode) == 0o600
        assert (keys / "authorized" / f"{party}.key").is_file()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    before = (keys / "station.key_secret").read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        make_keys(keys)
    assert (keys / "station.key_secret").read_bytes() == before


def test_config_names_a_missing_or_wrong_key_at_load(keys, random_bundle, replay):
    cams = [{"kind": "folder", "path": str(replay)}]
    good = {"secret_key": str(keys / "station.key_secret"), "server_key": str(keys / "bridge.key"),
            "authorized": str(keys / "authorized")}
    load_runtime_config(overrides=runtime_config(random_bundle, cams, curve=good))
    for change, message in ((("secret_key", str(keys / "nope")), "cannot read CURVE certificate"),
                            (("secret_key", str(keys / "bridge.key")), "only a public key"),
                            (("server_key", None), "server_key is needed"),
                            (("authorized", str(keys / "empty")), "must be a folder")):
        with pytest.raises(ConfigError, match=message):
            load_runtime_config(overrides=runtime_config(random_bundle, cams, curve={**good, change[0]: change[1]}))


def _dealer(endpoint, curve=None):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        as_client(s, curve)
    s.connect(endpoint)
    return s


def test_bridge_side_hears_only_authorized_stations(keys, tmp_path):
    from sclvi.edge.messages import TOPIC_VERDICT
    import msgpack

    from sclvi.edge.endpoints import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = CurveConfig(secret_key=str(keys / "bridge.key_secret"), authorized=str(keys / "authorized"))
    listener = VerdictListener(endpoint, curve=server)
    stranger_keys = tmp_path / "other"
    make_keys(stranger_keys)  # a valid certificate that is not in keys/authorized
    verdict = {"camera": "cam0", "seq": 1, "run": "r", "verdict": "NG"}
    try:
        senders = {
            "plain": _dealer(endpoint),
            "stranger": _dealer(endpoint, CurveConfig(secret_key=str(stranger_keys / "station.key_secret"),
                                                      server_key=str(keys / "bridge.key"))),
        }
        for i, s in enumerate(senders.values()):
            try:  # once the bridge has refused its handshake, a DEALER has no pipe left: a blocking send hung
                s.send_multipart([TOPIC_VERDICT, msgpack.packb({**verdict, "seq": 10 + i})], flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        assert listener.receive(1500) is None  # neither the plain nor the unknown station is heard
        station = _dealer(endpoint, CurveConfig(secret_key=str(keys / "station.key_secret"), server_key=str(keys / "bridge.key")))
        station.send_multipart([TOPIC_VERDICT, msgpack.packb(verdict)])
        got = listener.receive(3000)
        assert got is not None and got["seq"] == 1
        assert station.poll(3000) and station.recv_multipart()[0] == b"ack"
        for s in (*senders.values(), station):
            s.close()
    finally:
        listener.close()


def test_runtime_with_curve_delivers_every_verdict_and_answers_only_authorized_control(keys, random_bundle, replay):
    station = {"secret_key": str(keys / "station.key_secret"), "server_key": str(keys / "bridge.key"),
               "authorized": str(keys / "authorized")}
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 3, "loop": True,
                                          "max_frames": 12}], curve=station)
    bridge = CurveConfig(secret_key=str(keys / "bridge.key_secret"), authorized=str(keys / "authorized"))
    verdicts, done = [], threading.Event()

    def plc():
        listener = VerdictListener(cfg["verdict_endpoint"], curve=bridge)
        while not done.is_set():
            v = listener.receive(100)
            if v is not None:
                verdicts.append(v)
        listener.close()

    threading.Thread(target=plc, daemon=True).start()
    rt = Runtime(load_runtime_config(overrides=cfg))
    result = {}
    t = threading.Thread(target=lambda: result.update(rt.run()), daemon=True)
    t.start()
    end = time.time() + 60
    while not verdicts and time.time() < end:  # the runtime is up (a loaded machine takes a while to start it)
        time.sleep(0.05)
    ctx = zmq.Context.instance()
    plain = ctx.socket(zmq.REQ)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(cfg["control_endpoint"])
    try:  # refused at the handshake, the socket may have no pipe to queue on (a blocking send would hang)
        plain.send(json.dumps({"cmd": "status"}).encode(), flags=zmq.NOBLOCK)
    except zmq.Again:
        pass
    operator = ctx.socket(zmq.REQ)
    operator.setsockopt(zmq.LINGER, 0)
    as_client(operator, CurveConfig(secret_key=str(keys / "operator.key_secret"), server_key=str(keys / "station.key")))
    operator.connect(cfg["control_endpoint"])
    operator.send(json.dumps({"cmd": "status"}).encode())
    assert operator.poll(10000), "the authorized operator got no answer"
    assert "workers" in json.loads(operator.recv())
    assert not plain.poll(500)  # a client without the keys never gets a reply
    t.join(120)
    time.sleep(0.5)
    done.set()
    plain.close()
    operator.close()
    assert sorted(v["seq"] for v in verdicts) == list(range(1, 13))
    assert result["acks"] == 12


def test_operator_view_of_a_curve_station_sees_its_parts_and_commands_it_while_a_keyless_feed_hears_nothing(
        keys, random_bundle, replay):
    import httpx

    from sclvi.view.app import BackgroundView
    from sclvi.view.feed import TelemetryFeed
    from sclvi.edge.endpoints import free_ports

    station = {"secret_key": str(keys / "station.key_secret"), "server_key": str(keys / "bridge.key"),
               "authorized": str(keys / "authorized")}
    token = "operator-token-0123456789"
    *ports, view_port = free_ports(4)
    cfg = load_runtime_config(overrides=runtime_config(
        random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 4, "loop": True, "max_frames": 40}], ports,
        curve=station, heartbeat_s=0.2, preview_hz=50, control_token=token))
    bridge = CurveConfig(secret_key=str(keys / "bridge.key_secret"), authorized=str(keys / "authorized"))
    done = threading.Event()

    def plc():
        listener = VerdictListener(cfg.verdict_endpoint, curve=bridge)
        while not done.is_set():
            listener.receive(100)
        listener.close()

    threading.Thread(target=plc, daemon=True).start()
    outsider = TelemetryFeed(cfg.telemetry_endpoint)  # no keys: the encrypted telemetry must stay shut to it
    outsider.start()
    rt = Runtime(cfg)
    t = threading.Thread(target=rt.run, daemon=True)
    view = BackgroundView(cfg, port=view_port)
    try:
        t.start()
        state, end = {}, time.time() + 60
        while not state.get("parts") and time.time() < end:
            state = httpx.get(f"{view.url}/api/state", timeout=5).json()
            time.sleep(0.2)
        assert state["connected"] and state["parts"][0]["verdict"] in ("OK", "NG")  # heard through CURVE
        reply = httpx.post(f"{view.url}/api/command", json={"cmd": "pause", "token": token}, timeout=10).json()
        assert reply.get("ok", True) and "error" not in reply
        end = time.time() + 10
        while not rt.shared.paused.is_set() and time.time() < end:
            time.sleep(0.05)
        assert rt.shared.paused.is_set()  # the command went through the CURVE control socket
        assert outsider.snapshot()["connected"] is False and outsider.version == 0
        httpx.post(f"{view.url}/api/command", json={"cmd": "resume", "token": token}, timeout=10)
    finally:
        t.join(120)  # the source is finite: the run ends by itself
        done.set()
        view.close()
        outsider.stop()
