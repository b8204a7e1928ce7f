"""ZeroMQ CURVE for the sockets that leave the box: verdicts, control and telemetry.

Why: on loopback or an `ipc://` socket in a private folder only local processes can talk to the station;
once a socket must cross a network (bridge on another PC, an operator panel), anyone on that network
could read verdicts, forge acknowledgements or send commands. CURVE (libzmq's built-in Curve25519)
encrypts the link and, through a ZAP authenticator, admits only clients whose public certificate is in
an `authorized` folder. Keys are zmq.auth certificate files, made by `sclvi keys DIR`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict, Field
from zmq.auth.thread import ThreadAuthenticator

from sclvi.errors import ConfigError

#: The parties of one station, each with its own certificate.
PARTIES = ("station", "bridge", "operator")


class CurveConfig(BaseModel):
    """This process's keys. `secret_key` is its own certificate (`NAME.key_secret`); `server_key` the public
    certificate of the server it connects to (the runtime: the bridge's); `authorized` the folder of public
    certificates allowed to connect to the sockets it binds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_key: str = Field(description="this process's certificate with its secret key (NAME.key_secret)")
    server_key: str | None = Field(None, description="public certificate of the server we connect to")
    authorized: str | None = Field(None, description="folder of public certificates allowed to connect to us")


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a .key_secret certificate, or a ConfigError that says how to make one."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE certificate {path} ({exc}): make keys with `sclvi keys DIR`") from None
    if secret is None:
        raise ConfigError(f"{path} holds only a public key: give the NAME.key_secret file")
    return public, secret


def load_public(path: str | Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE public certificate {path} ({exc}): make keys with `sclvi keys DIR`") from None
    return public


def check(curve: CurveConfig, serves: bool, connects: bool) -> None:
    """Fail at load, not at the first message: every key this process needs is readable."""
    load_secret(curve.secret_key)
    if connects:
        if not curve.server_key:
            raise ConfigError("curve.server_key is needed to connect (the bridge's public certificate, bridge.key)")
        load_public(curve.server_key)
    if serves:
        folder = Path(curve.authorized) if curve.authorized else None
        if folder is None or not folder.is_dir() or not list(folder.glob("*.key")):
            raise ConfigError(f"curve.authorized {curve.authorized!r} must be a folder holding the public certificates "
                              "(*.key) of the clients allowed to connect")


def as_server(ctx: zmq.Context, sock: zmq.Socket, curve: CurveConfig) -> ThreadAuthenticator:
    """Before bind: `sock` encrypts, and a ZAP authenticator on `ctx` admits only the certificates in
    `curve.authorized` (each context here serves one CURVE socket). Stop the returned authenticator
    before terminating `ctx`."""
    check(curve, serves=True, connects=False)
    public, secret = load_secret(curve.secret_key)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(curve.authorized))
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_server = True
    return auth


def as_client(sock: zmq.Socket, curve: CurveConfig) -> None:
    """Before connect: talk to the server whose public certificate is `curve.server_key`."""
    public, secret = load_secret(curve.secret_key)
    if not curve.server_key:
        raise ConfigError("curve.server_key is needed to connect (the server's public certificate)")
    set_client_keys(sock, (public, secret, load_public(curve.server_key)))


def set_client_keys(sock: zmq.Socket, keys: tuple[bytes, bytes, bytes]) -> None:
    """Before connect: (our public, our secret, the server's public) key."""
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys


def make_keys(folder: str | Path) -> dict[str, Path]:
    """A certificate per party (station, bridge, operator) and `authorized/` with all their public halves.
    Existing keys are never overwritten: replacing a deployed key would lock the line out."""
    folder = Path(folder)
    authorized = folder / "authorized"
    made = {}
    for party in PARTIES:
        if (folder / f"{party}.key_secret").exists():
            raise ConfigError(f"{folder / (party + '.key_secret')} exists: keys are never overwritten, choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    authorized.mkdir(exist_ok=True)
    for party in PARTIES:
        public, secret = zmq.auth.create_certificates(str(folder), party)
        Path(secret).chmod(0o600)
        shutil.copy(public, authorized / f"{party}.key")
        made[party] = Path(secret)
    return made
