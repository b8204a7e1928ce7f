"""A verdict that overtakes an earlier one must never make the bridge acknowledge the earlier one unwritten
(the loss CI caught across a mid-run bridge restart: seq 5 reached the new bridge before the resent seq 4)."""

import json
import time

import msgpack
import zmq

from sclvi.plc.bridge import Bridge
from sclvi.plc.config import load_bridge_config
from sclvi.plc.delivery import MAX_MISSING, Arrival, CameraDelivery
from sclvi.plc.registers import FIELDS, decode
from sclvi.edge.endpoints import free_ports
from test_plc import _verdict


def test_a_seq_overtaken_by_a_later_one_is_late_not_a_duplicate():
    d = CameraDelivery()
    assert d.arrival("r1", 1) is Arrival.NEXT and d.written("r1", 1, None) == []
    assert d.arrival("r1", 1) is Arrival.DUPLICATE
    assert d.arrival("r1", 4) is Arrival.AHEAD and d.written("r1", 4, None) == [2, 3]
    assert d.arrival("r1", 3) is Arrival.LATE  # was `seq <= last written`: acknowledged, never written
    d.written("r1", 3, None)
    assert d.arrival("r1", 3) is Arrival.DUPLICATE and d.arrival("r1", 2) is Arrival.LATE
    assert d.arrival("r1", 5) is Arrival.NEXT
    assert d.arrival("r2", 1) is Arrival.NEXT and d.arrival("r2", 7) is Arrival.AHEAD  # a new run starts at 1
    d.written("r1", 10 * MAX_MISSING, None)
    assert len(d.missing) == MAX_MISSING and d.arrival("r1", 2) is Arrival.LATE  # too old to tell: written again
    again = CameraDelivery.from_json(json.loads(json.dumps(d.to_json())))
    assert again == d
    old = CameraDelivery.from_json(["r1", 7, [1] * FIELDS])  # an earlier version's state file
    assert (old.high, old.block, old.arrival("r1", 7)) == (7, [1] * FIELDS, Arrival.DUPLICATE)


def _exchange(bridge, runtime, seq, **kw):
    """Send one verdict through the real socket; returns (written verdict or None, acked seq or None: no ack
    within 1.5 s, which a loaded machine still delivers in milliseconds)."""
    runtime.send_multipart([b"verdict", msgpack.packb(_verdict(seq, **kw))])
    assert bridge.sock.poll(5000)
    ident, *frames = bridge.sock.recv_multipart()
    written = bridge.handle(ident, frames)
    acked = msgpack.unpackb(runtime.recv_multipart()[1])["seq"] if runtime.poll(1500) else None
    return written, acked


def _bridge(tmp_path, reorder_wait_ms):
    zmq_port, modbus_port = free_ports(2)
    cfg = load_bridge_config(overrides={
        "verdict_endpoint": f"tcp://127.0.0.1:{zmq_port}", "mode": "modbus-server", "port": modbus_port,
        "cameras": ["cam0"], "reject_pulse_ms": 0, "reorder_wait_ms": reorder_wait_ms,
        "state_file": str(tmp_path / "state.json")})
    bridge = Bridge(cfg)
    runtime = zmq.Context.instance().socket(zmq.DEALER)
    runtime.setsockopt(zmq.LINGER, 0)
    runtime.connect(cfg.verdict_endpoint)
    return bridge, runtime


def _seq_in_registers(bridge):
    return decode([bridge.plc.read_register(i) for i in range(FIELDS)])["seq"]


def test_the_bridge_holds_a_verdict_that_overtook_one_and_writes_both_in_order(tmp_path):
    bridge, runtime = _bridge(tmp_path, reorder_wait_ms=5000)
    try:
        assert _exchange(bridge, runtime, 1)[1] == 1
        # seq 2 was lost on the way (sent into a bridge that was stopping); seq 3 comes first
        assert _exchange(bridge, runtime, 3) == (None, None)  # held: neither written nor acknowledged
        assert _seq_in_registers(bridge) == 1 and bridge.stats["held"] == 1
        written, acked = _exchange(bridge, runtime, 2)  # the runtime's resend of seq 2
        assert written["seq"] == 2 and acked == 2 and _seq_in_registers(bridge) == 2
        written, acked = _exchange(bridge, runtime, 3)  # and then its resend of seq 3
        assert written["seq"] == 3 and acked == 3 and _seq_in_registers(bridge) == 3
        assert _exchange(bridge, runtime, 2) == (None, 2)  # a real duplicate: acknowledged, not written again
        assert bridge.stats["written"] == 3 and bridge.stats["duplicates"] == 1
    finally:
        runtime.close()
        bridge.close()


def test_past_the_wait_the_later_verdict_is_written_and_the_earlier_one_still_is_when_it_comes(tmp_path):
    bridge, runtime = _bridge(tmp_path, reorder_wait_ms=200)
    try:
        assert _exchange(bridge, runtime, 1)[1] == 1
        assert _exchange(bridge, runtime, 3) == (None, None)
        time.sleep(0.3)
        written, acked = _exchange(bridge, runtime, 3)  # seq 2 did not come in time: the line goes on
        assert written["seq"] == 3 and acked == 3
        bridge.close()
        bridge = Bridge(bridge.cfg)  # what was skipped survives a restart (state file)
        written, acked = _exchange(bridge, runtime, 2)
        assert written["seq"] == 2 and acked == 2 and bridge.stats["out_of_order"] == 1
        assert _seq_in_registers(bridge) == 2
    finally:
        runtime.close()
        bridge.close()


def test_a_verdict_an_earlier_run_owed_is_written_late_and_never_holds_up_the_current_run(tmp_path):
    bridge, runtime = _bridge(tmp_path, reorder_wait_ms=5000)
    try:
        assert _exchange(bridge, runtime, 1, run="r2")[1] == 1
        # run r1 stopped owing seq 6; r2's publisher resends it, marked carried, with its old acquisition time
        written, acked = _exchange(bridge, runtime, 6, run="r1", carried=True, t_acq_ns=1)
        assert written["seq"] == 6 and acked == 6 and bridge.stats["held"] == 0
        block = decode([bridge.plc.read_register(i) for i in range(FIELDS)])
        assert block["late"] and block["seq"] == 6 and block["run_code"] != 0
        # the current run goes on in order: seq 2 is next, not held behind the carried one
        written, acked = _exchange(bridge, runtime, 2, run="r2")
        assert written["seq"] == 2 and acked == 2 and bridge.stats["held"] == 0
        assert not decode([bridge.plc.read_register(i) for i in range(FIELDS)])["late"]
        assert bridge.stats["carried"] == 1 and bridge.stats["out_of_order"] == 0
    finally:
        runtime.close()
        bridge.close()
