"""The PLC bridge against real pymodbus servers and clients on 127.0.0.1, fed by the real runtime."""

import contextlib
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq

from sclvi.edge.config import load_runtime_config
from sclvi.edge.supervisor import Runtime
from sclvi.plc.bridge import Bridge
from sclvi.plc.config import load_bridge_config
from sclvi.plc.modbus import ModbusServerPlc
from sclvi.plc.registers import BLOCK, FIELDS, NEW, Block, decode, run_code
from sclvi.edge.endpoints import free_port, free_ports
from test_edge_runtime import replay, runtime_config  # noqa: F401 (fixture)


def _verdict(seq, verdict="OK", **kw):
    return {"run": "r1", "camera": "cam0", "seq": seq, "frame_id": 100 + seq, "t_acq_ns": time.time_ns(),
            "trigger": None, "verdict": verdict, "reason": None, "score": 0.25, "regions": [], **kw}


def test_register_block_round_trip_and_fail_closed_mapping():
    d = decode(Block.encode(_verdict(70000, "NG", score=1.2345, trigger=7, regions=[{}, {}]), 3, True, 0).registers)
    assert abs(d.pop("score") - 1.2345) < 1e-3
    assert d == {"new": 1, "verdict": "NG", "reject": True, "reason": None, "seq": 70000, "run_code": run_code("r1"),
                 "frame_id": 70100, "trigger": 7, "regions": 2, "late": False, "overrun": False, "count": 3}
    ni = Block.encode(_verdict(1, "NOT_INSPECTED", reason="lost", score=None), 1, True, 1)
    assert ni.reject and decode(ni.registers)["reason"] == "lost" and decode(ni.registers)["late"]
    assert decode(ni.registers)["score"] is None
    assert not Block.encode(_verdict(1, "NOT_INSPECTED", reason="paused"), 1, False, 0).reject  # only if configured


class PollingPlc(threading.Thread):
    """A PLC as Modbus client: polls the `new` flag of camera 0's block, reads the verdict, clears the flag."""

    def __init__(self, port):
        super().__init__(daemon=True)
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient("127.0.0.1", port=port)
        self.seen, self.done = [], threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                if not self.client.connected:
                    self.client.connect()
                regs = self.client.read_holding_registers(0, count=FIELDS, device_id=1).registers
            except Exception:  # the bridge (our server) is restarting
                self.client.close()
                time.sleep(0.05)
                continue
            if regs[NEW]:
                self.seen.append(decode(regs))
                self.client.write_register(NEW, 0, device_id=1)
            time.sleep(0.005)
        self.client.close()


def _bridge_thread(cfg):
    bridge = Bridge(cfg)
    stop = threading.Event()
    t = threading.Thread(target=bridge.serve, args=(stop,), daemon=True)
    t.start()
    return bridge, stop, t


def _stop_bridge(bridge, stop, t) -> None:
    """As `sclvi bridge` stops: serve() returns (it may be waiting out a handshake), then close(). Closing
    while serve() still runs would let the old bridge write into a stopped server and acknowledge it."""
    stop.set()
    t.join(60)
    assert not t.is_alive(), "the bridge did not stop within 60 s"
    bridge.close()


def _two_runs_with_a_bridge_restart(cfg, rt_cfg, plc, settle_s: float) -> list[str]:
    """Two runtime runs of 8 verdicts, the bridge restarted (same port, same state file) once the PLC has read
    3 of the first; returns the run ids once the PLC has read all 16 (or `settle_s` passed), everything closed.
    The runtime waits 4 ack timeouts for acks after its source ended: 16 s here, room for a loaded 2-core
    machine to restart an OPC UA bridge and hand over the rest of the run one handshake at a time (the
    bridge's reorder_wait_ms must exceed the ack timeout)."""
    rt_cfg = {**rt_cfg, "ack_timeout_ms": 4000}
    assert cfg.reorder_wait_ms > 4000
    bridge, stop, t = _bridge_thread(cfg)
    plc.start()
    runs = []
    try:
        for restart_bridge in (True, False):
            rt = Runtime(load_runtime_config(overrides=rt_cfg))
            runs.append(rt.shared.run_id)
            th = threading.Thread(target=rt.run)
            th.start()
            if restart_bridge:
                end = time.time() + 60
                while len(plc.seen) < 3 and time.time() < end:
                    time.sleep(0.02)
                _stop_bridge(bridge, stop, t)
                bridge, stop, t = _bridge_thread(cfg)
            th.join(120)
        end = time.time() + settle_s
        while len(plc.seen) < 16 and time.time() < end:
            time.sleep(0.05)
    finally:
        _stop_bridge(bridge, stop, t)
        plc.done.set()
        plc.join(10)
    return runs


def _as_a_plc_takes_them(seen: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(run, seq) de-duplicated as deploy/PLC.md tells PLC programs to: a verdict the PLC read just before a
    bridge restart is presented again by the restarted bridge (a repeat, never a gap): one repeat at most."""
    taken = [k for i, k in enumerate(seen) if i == 0 or k != seen[i - 1]]
    assert len(seen) - len(taken) <= 1, seen
    return taken


def test_plc_reads_every_verdict_in_order_across_runtime_and_bridge_restarts(tmp_path, random_bundle, replay):
    port = free_port()
    rt_cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 6, "loop": True,
                                             "max_frames": 8}])
    cfg = load_bridge_config(overrides={
        "verdict_endpoint": rt_cfg["verdict_endpoint"], "mode": "modbus-server", "port": port, "cameras": ["cam0"],
        "handshake": True, "handshake_timeout_ms": 2000, "reject_pulse_ms": 20, "state_file": str(tmp_path / "state.json"),
        "reorder_wait_ms": 10000,
    })
    plc = PollingPlc(port)
    runs = _two_runs_with_a_bridge_restart(cfg, rt_cfg, plc, settle_s=10)
    got = _as_a_plc_takes_them([(v["run_code"], v["seq"]) for v in plc.seen])
    assert got == [(run_code(r), s) for r in runs for s in range(1, 9)]  # every verdict, in order, no gap
    assert all(v["reject"] == (v["verdict"] != "OK") for v in plc.seen)


def test_client_mode_writes_into_the_plc_and_acks_only_after_the_write(tmp_path):
    port, zmq_port = free_ports(2)
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    cfg = load_bridge_config(overrides={"verdict_endpoint": endpoint, "mode": "modbus-client", "port": port,
                                        "cameras": ["cam0", "cam1"], "register_base": 100, "reject_pulse_ms": 0})
    bridge = Bridge(cfg)
    ctx = zmq.Context.instance()
    runtime = ctx.socket(zmq.DEALER)  # what the runtime's publisher is
    runtime.setsockopt(zmq.LINGER, 0)
    runtime.connect(endpoint)
    try:
        v = _verdict(1, "NG", camera="cam1")
        runtime.send_multipart([b"verdict", msgpack.packb(v)])
        assert bridge.sock.poll(5000)
        ident, *frames = bridge.sock.recv_multipart()
        assert bridge.handle(ident, frames) is None  # no PLC listening yet: not written, not acknowledged
        assert not runtime.poll(300) and bridge.stats["plc_errors"] == 1
        plc = ModbusServerPlc("127.0.0.1", port, 200, 4)  # now the PLC is up
        try:
            assert bridge.handle(ident, frames)["seq"] == 1
            topic, body = runtime.recv_multipart()
            assert topic == b"ack" and msgpack.unpackb(body) == {"run": "r1", "camera": "cam1", "seq": 1}
            regs = [plc.read_register(100 + BLOCK + i) for i in range(FIELDS)]
            assert decode(regs)["seq"] == 1 and decode(regs)["verdict"] == "NG" and decode(regs)["reject"]
            assert plc.read_register(100) == 0  # cam0's block untouched
            assert bridge.handle(ident, frames) is None and bridge.stats["duplicates"] == 1  # acked, not rewritten
            assert runtime.poll(2000)
        finally:
            plc.close()
    finally:
        runtime.close()
        bridge.close()


def test_a_verdict_the_plc_had_not_taken_is_presented_again_by_a_restarted_server_bridge(tmp_path):
    """Server mode: the registers die with the bridge. A verdict written and acknowledged, but not yet read by
    the PLC when the bridge stopped, must reappear after the restart instead of being lost."""
    from pymodbus.client import ModbusTcpClient

    port, zmq_port = free_ports(2)
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    cfg = load_bridge_config(overrides={"verdict_endpoint": endpoint, "mode": "modbus-server", "port": port,
                                        "cameras": ["cam0"], "handshake": True, "handshake_timeout_ms": 100,
                                        "reject_pulse_ms": 0, "state_file": str(tmp_path / "state.json")})
    runtime = zmq.Context.instance().socket(zmq.DEALER)
    runtime.setsockopt(zmq.LINGER, 0)
    runtime.connect(endpoint)
    plc = ModbusTcpClient("127.0.0.1", port=port)

    def block():
        plc.close()
        assert plc.connect()
        return decode(plc.read_holding_registers(0, count=FIELDS, device_id=1).registers)

    try:
        bridge = Bridge(cfg)
        runtime.send_multipart([b"verdict", msgpack.packb(_verdict(1, "NG"))])
        assert bridge.sock.poll(5000)
        assert bridge.handle(*_split(bridge.sock.recv_multipart()))["seq"] == 1  # written, acknowledged ...
        assert runtime.poll(2000)
        bridge.close()  # ... and the bridge stops before the PLC read it

        bridge = Bridge(cfg)  # same port, same state file
        got = block()
        assert (got["new"], got["seq"], got["verdict"], got["run_code"]) == (1, 1, "NG", run_code("r1"))
        assert bridge.stats["represented"] == 1
        plc.write_register(NEW, 0, device_id=1)  # the PLC takes it this time
        bridge.close()

        bridge = Bridge(cfg)
        assert bridge.stats["represented"] == 0 and block()["new"] == 0  # taken: not presented a third time
        bridge.close()
    finally:
        plc.close()
        runtime.close()


def test_an_overrun_names_the_verdict_the_plc_did_not_take_even_out_of_order(tmp_path, caplog):
    """The PLC never clears `New`: each write overruns the block before it. Seq 3 overtook seq 2 (written
    after the reorder wait), so the block seq 2 overwrote is seq 3's, not seq 1's."""
    port, zmq_port = free_ports(2)
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    cfg = load_bridge_config(overrides={"verdict_endpoint": endpoint, "mode": "modbus-server", "port": port,
                                        "cameras": ["cam0"], "handshake": True, "handshake_timeout_ms": 50,
                                        "reject_pulse_ms": 0, "reorder_wait_ms": 1})
    runtime = zmq.Context.instance().socket(zmq.DEALER)
    runtime.setsockopt(zmq.LINGER, 0)
    runtime.connect(endpoint)
    bridge = Bridge(cfg)
    try:
        for seq in (1, 3, 3, 2):  # seq 3 is held once (it overtook seq 2), then written past the 1-ms wait
            runtime.send_multipart([b"verdict", msgpack.packb(_verdict(seq, "OK"))])
            assert bridge.sock.poll(5000)
            bridge.handle(*_split(bridge.sock.recv_multipart()))
            time.sleep(0.01)
        overruns = [r.getMessage() for r in caplog.records if "did not take" in r.getMessage()]
        assert overruns == ["PLC did not take verdict cam0 seq 1 in time: overwriting it with seq 3",
                            "PLC did not take verdict cam0 seq 3 in time: overwriting it with seq 2"]
        assert bridge.stats["overruns"] == 2
    finally:
        bridge.close()
        runtime.close()


def _split(message):
    return message[0], message[1:]


@pytest.mark.parametrize("change, message", [
    ({"cameras": ["a", "a"]}, "unique"), ({"verdict_endpoint": "udp://x:1"}, "tcp://HOST:PORT"), ({"cameras": []}, "cameras"),
])
def test_bad_bridge_configs_are_refused(change, message):
    from sclvi.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_bridge_config(overrides={"cameras": ["cam0"], **change})


def test_a_bridge_that_cannot_serve_opcua_exits_with_the_reason_instead_of_hanging(tmp_path):
    """asyncua's event-loop thread is not a daemon: left running after a failed start it kept `sclvi bridge`
    alive for ever with its port taken (a dead station under systemd, found when pytest hung at exit)."""
    pytest.importorskip("asyncua")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = tmp_path / "bridge.yaml"
        cfg.write_text(f"mode: opcua-server\nhost: 127.0.0.1\nport: {taken.getsockname()[1]}\ncameras: [cam0]\n")
        done = subprocess.run([sys.executable, "-m", "sclvi", "bridge", str(cfg)], capture_output=True, text=True,
                              timeout=60)
    assert done.returncode != 0
    assert "cannot serve OPC UA" in done.stdout + done.stderr


class OpcUaPlc(threading.Thread):
    """A PLC / SCADA as OPC UA client: subscribes to the bridge's events, polls cam0's `New`, reads the
    verdict, clears `New` (the handshake)."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.seen, self.events, self.done = url, [], [], threading.Event()

    def event_notification(self, event):  # asyncua subscription handler
        self.events.append(event.Message.Text)

    def run(self):
        from asyncua.sync import Client

        from sclvi.plc.opcua import FIELDS as NODES

        while not self.done.is_set():  # reconnects while the bridge (the server) restarts
            client = Client(self.url, timeout=2)
            try:
                client.connect()
                ns = client.get_namespace_index("urn:sclvi:station")
                node = {name: client.nodes.objects.get_child([f"{ns}:cam0", f"{ns}:{name}"]) for name, *_ in NODES}
                sub = client.create_subscription(50, self)
                sub.subscribe_events()
                while not self.done.is_set():
                    if node["New"].read_value():
                        self.seen.append({name: node[name].read_value() for name in node})
                        node["New"].write_value(False)
                    time.sleep(0.005)
                sub.delete()
            except Exception:
                time.sleep(0.1)
            finally:
                try:
                    client.disconnect()
                except Exception:
                    pass


def test_opcua_server_mode_gives_scada_every_verdict_in_order_across_restarts(tmp_path, random_bundle, replay):
    """Two runtime runs, the bridge (and so the OPC UA server) restarted in the middle of the first: the client
    reconnects and reads every verdict of both runs in order, and gets one event per verdict while subscribed."""
    pytest.importorskip("asyncua")
    port = free_port()
    rt_cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 6, "loop": True,
                                             "max_frames": 8}])
    cfg = load_bridge_config(overrides={"verdict_endpoint": rt_cfg["verdict_endpoint"], "mode": "opcua-server",
                                        "port": port, "cameras": ["cam0"], "handshake": True,
                                        "handshake_timeout_ms": 3000, "reject_pulse_ms": 20, "reorder_wait_ms": 10000,
                                        "state_file": str(tmp_path / "state.json")})
    plc = OpcUaPlc(f"opc.tcp://127.0.0.1:{port}/sclvi/")
    runs = _two_runs_with_a_bridge_restart(cfg, rt_cfg, plc, settle_s=30)
    got = _as_a_plc_takes_them([(v["Run"], v["Seq"]) for v in plc.seen])
    assert got == [(run_code(r), s) for r in runs for s in range(1, 9)]
    assert all(v["Reject"] == (v["Verdict"] != 1) for v in plc.seen)  # 1 = OK (deploy/PLC.md)
    events = [e.split(" verdict")[0] for e in plc.events]
    assert events[-8:] == [f"cam0 seq {s}" for s in range(1, 9)]  # the second run: one event each


def test_secured_opcua_endpoint_serves_only_trusted_clients_with_sign_and_encrypt(tmp_path):
    """opcua_security sign-and-encrypt: the certificates from `sclvi opcua-certs`, a trusted SCADA client reads
    the verdict; a client without security, and one with a certificate nobody trusted, get nothing."""
    pytest.importorskip("asyncua")
    from asyncua.sync import Client
    from typer.testing import CliRunner

    from sclvi.cli import app
    from sclvi.errors import ConfigError
    from sclvi.plc.bridge import make_plc
    from sclvi.plc.opcua_security import make_certificate
    from sclvi.plc.registers import Block

    certs = tmp_path / "certs"
    made = CliRunner().invoke(app, ["opcua-certs", str(certs), "--host", "localhost", "--client", "scada"])
    assert made.exit_code == 0, made.output
    assert (certs / "trusted" / "scada.der").is_file() and oct((certs / "bridge.pem").stat().st_mode & 0o777) == "0o600"
    assert CliRunner().invoke(app, ["opcua-certs", str(certs)]).exit_code != 0  # never overwritten
    stranger = make_certificate(tmp_path / "other", "stranger", "urn:sclvi:client:stranger", "localhost", client=True)
    port = free_port()
    base = {"mode": "opcua-server", "port": port, "cameras": ["cam0"], "opcua_security": "sign-and-encrypt"}
    with pytest.raises(ConfigError, match="needs opcua_certificate, opcua_private_key, opcua_trusted_clients"):
        load_bridge_config(overrides=base)
    (tmp_path / "empty").mkdir()
    files = {"opcua_certificate": str(certs / "bridge.der"), "opcua_private_key": str(certs / "bridge.pem")}
    with pytest.raises(ConfigError, match="no PLC or SCADA could connect"):
        load_bridge_config(overrides={**base, **files, "opcua_trusted_clients": str(tmp_path / "empty")})
    cfg = load_bridge_config(overrides={**base, **files, "opcua_trusted_clients": str(certs / "trusted")})
    plc = make_plc(cfg)
    url = f"opc.tcp://127.0.0.1:{port}/sclvi/"

    def read_seq(security: str | None) -> int:
        client = Client(url, timeout=4)
        try:
            if security:
                client.set_security_string(security)
            client.connect()
            ns = client.get_namespace_index("urn:sclvi:station")
            return client.nodes.objects.get_child([f"{ns}:cam0", f"{ns}:Seq"]).read_value()
        finally:  # also after a refused connect: disconnect() stops the client's thread, which would block exit
            with contextlib.suppress(Exception):
                client.disconnect()

    try:
        plc.write_block(0, Block.encode({"verdict": "NG", "seq": 41, "run": "r"}, 1, True, 0).registers)
        assert read_seq(f"Basic256Sha256,SignAndEncrypt,{certs / 'scada.der'},{certs / 'scada.pem'}") == 41
        for refused in (None, f"Basic256Sha256,SignAndEncrypt,{stranger[0]},{stranger[1]}"):
            with pytest.raises(Exception):
                read_seq(refused)
    finally:
        plc.close()
