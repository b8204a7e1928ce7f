"""Talk to a running station's control socket (the operator view and `sclvi ctl` both do), with the
station's CURVE certificate when CURVE is on."""

from __future__ import annotations

import json
from typing import Any

import zmq

from sclvi.edge.config import RuntimeConfig
from sclvi.edge.curve import set_client_keys


def control_keys(cfg: RuntimeConfig) -> tuple[bytes, bytes, bytes] | None:
    """With CURVE on, the view (on the station) talks to the station's sockets with the station's own
    certificate, which is in its authorized folder."""
    if cfg.curve is None:
        return None
    from sclvi.edge.curve import load_secret

    public, secret = load_secret(cfg.curve.secret_key)
    return public, secret, public


def ask_control(cfg: RuntimeConfig, request: dict[str, Any], timeout_ms: int = 3000) -> dict[str, Any]:
    """One request on the control socket (a fresh REQ each time: a timed-out REQ cannot be reused)."""
    if not cfg.control_endpoint:
        return {"ok": False, "error": "the runtime has no control_endpoint"}
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    keys = control_keys(cfg)
    if keys is not None:
        set_client_keys(sock, keys)
    try:
        sock.connect(cfg.control_endpoint)
        sock.send(json.dumps(request).encode())
        if not sock.poll(timeout_ms):
            return {"ok": False, "error": "the runtime did not answer (is `sclvi run` up?)"}
        return json.loads(sock.recv())
    finally:
        sock.close()
