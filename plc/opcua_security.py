"""OPC UA security for the bridge's server: certificates, the policies offered, and which clients are let in.

Why: an OPC UA endpoint without security lets anything on the network read (and clear) the verdict
nodes; plants that put the bridge on a shared cell or plant network require Sign or SignAndEncrypt with
certificates, the way every PLC / SCADA vendor sets it up: the server has an application certificate, the
integrator copies each client's certificate (S7-1500, TwinCAT, Ignition export one) into the trusted
folder, and clients not in it are refused.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from sclvi.errors import ConfigError

#: opcua_security -> asyncua policy name (Basic256Sha256: the policy every current PLC supports).
POLICIES = {"sign": "Basic256Sha256_Sign", "sign-and-encrypt": "Basic256Sha256_SignAndEncrypt"}
SERVER_URI = "urn:sclvi:bridge"


def make_certificate(folder: str | Path, name: str, app_uri: str, host: str | None = None, client: bool = False,
                     days: int = 3650) -> tuple[Path, Path]:
    """A self-signed application certificate (`name`.der) and its private key (`name`.pem, mode 0600) in
    `folder`; never overwrites. Returns (certificate, key)."""
    from asyncua.crypto import cert_gen
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder = Path(folder)
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    if cert_path.exists() or key_path.exists():
        raise ConfigError(f"{cert_path} or {key_path} exists: certificates are never overwritten (delete them first)")
    folder.mkdir(parents=True, exist_ok=True)
    host = host or socket.gethostname()
    key = cert_gen.generate_private_key()
    use = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(
        key, app_uri, {"organizationName": "SCL-VI station"},
        [x509.UniformResourceIdentifier(app_uri), x509.DNSName(host)], extended=use, days=days)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_path, key_path


def check_files(security: str, certificate: str | None, private_key: str | None, trusted: str | None) -> None:
    """At config load: a secured endpoint needs its certificate, key and a non-empty trusted-clients folder."""
    if security == "none":
        return
    missing = [n for n, v in (("opcua_certificate", certificate), ("opcua_private_key", private_key),
                              ("opcua_trusted_clients", trusted)) if not v]
    if missing:
        raise ConfigError(f"opcua_security {security} needs {', '.join(missing)} (`sclvi opcua-certs DIR` makes a server "
                          "certificate and the trusted folder)")
    for what, path in (("opcua_certificate", certificate), ("opcua_private_key", private_key)):
        if not Path(path).is_file():  # type: ignore[arg-type]
            raise ConfigError(f"{what} {path} is not a file")
    folder = Path(trusted)  # type: ignore[arg-type]
    if not folder.is_dir() or not any(p.suffix.lower() in (".der", ".pem") for p in folder.iterdir()):
        raise ConfigError(f"opcua_trusted_clients {folder} must be a folder holding the clients' certificates "
                          "(.der or .pem): with none, no PLC or SCADA could connect")


def secure(server: Any, security: str, certificate: str, private_key: str, trusted: str) -> None:
    """Offer only the chosen policy on the (not yet started) asyncua.sync Server, with our certificate, and
    refuse clients whose certificate is not in `trusted` (or is expired, or is not a client certificate)."""
    from asyncua import ua
    from asyncua.crypto.truststore import TrustStore
    from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions as Opt

    server.set_security_policy([getattr(ua.SecurityPolicyType, POLICIES[security])])
    server.load_certificate(str(certificate))
    server.load_private_key(str(private_key))
    store = TrustStore([Path(trusted)], [])
    server.tloop.post(store.load())
    server.aio_obj.set_certificate_validator(
        CertificateValidator(Opt.TIME_RANGE | Opt.TRUSTED | Opt.PEER_CLIENT, trust_store=store))
