"""Bundle signatures: an Ed25519 signature over the manifest, which holds the SHA-256 of every other file
(weights, mean image, banks, engines) and the calibrated thresholds — so one signature covers the bundle.

Why asymmetric: the engineering PC that trains and calibrates holds the private key; the line PC holds only
the public key, so whoever can write the bundle folder on the line (or intercept its copy) cannot change a
threshold, a bank or the weights and re-sign. A station config with `bundle_public_key` refuses a bundle
whose `bundle.sig` is missing or does not match. Needs the `cryptography` package (the `sign` extra).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from sclvi.errors import BundleError, ConfigError

SIGNATURE = "bundle.sig"
MANIFEST = "bundle.json"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigError("bundle signatures need the cryptography package: pip install 'sclvi[sign]'") from None
    return ed25519


def make_keys(folder: Path) -> tuple[Path, Path]:
    """A new key pair: `bundle_signing.key` (private, 0600: stays on the engineering PC) and
    `bundle_signing.pub` (goes to every station). Never overwrites."""
    ed25519 = _crypto()  # first: without cryptography, the install hint rather than an ImportError
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret, public = folder / "bundle_signing.key", folder / "bundle_signing.pub"
    if secret.exists() or public.exists():
        raise ConfigError(f"{folder} already holds bundle signing keys: refusing to overwrite them")
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(raw).decode() + "\n")
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public.write_text(base64.b64encode(pub).decode() + "\n")
    return secret, public


def _read_key(path: Path, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(Path(path).read_text().strip(), validate=True)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist (make a pair with `sclvi sign --new-keys DIR`)") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{what} {path} is not a base64 key ({exc})") from None
    if len(raw) != size:
        raise ConfigError(f"{what} {path} holds {len(raw)} bytes, an Ed25519 key has {size}")
    return raw


def _payload(bundle: Path) -> bytes:
    """The exact bytes signed: the manifest file as written (any change to it, even whitespace, breaks it)."""
    mf = Path(bundle) / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{bundle} is not a model bundle: {MANIFEST} is missing")
    return mf.read_bytes()


def sign_bundle(bundle: Path, private_key: Path) -> Path:
    """Write `bundle.sig` for the manifest as it is now (sign last: calibrate and build-engines change it)."""
    ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.from_private_bytes(_read_key(private_key, 32, "signing key"))
    sig = {"alg": "ed25519", "signature": base64.b64encode(key.sign(_payload(bundle))).decode()}
    path = Path(bundle) / SIGNATURE
    path.write_text(json.dumps(sig) + "\n")
    return path


def verify_bundle(bundle: Path, public_key: Path) -> None:
    """BundleError unless `bundle.sig` is a valid signature of the manifest by the key's owner."""
    ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    key = ed25519.Ed25519PublicKey.from_public_bytes(_read_key(public_key, 32, "bundle public key"))
    path = Path(bundle) / SIGNATURE
    if not path.is_file():
        raise BundleError(f"{bundle} is not signed ({SIGNATURE} missing) but the station requires signed bundles: "
                          "sign it on the engineering PC with `sclvi sign BUNDLE --key KEY`")
    try:
        sig = json.loads(path.read_text())
        signature = base64.b64decode(sig["signature"], validate=True)
        if sig.get("alg") != "ed25519":
            raise ValueError(f"algorithm {sig.get('alg')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path} is malformed ({exc}): sign the bundle again") from None
    try:
        key.verify(signature, _payload(bundle))
    except InvalidSignature:
        raise BundleError(f"{bundle}: the signature does not match {MANIFEST} (changed after signing, or signed with "
                          "another key): refusing it; re-sign after calibrate / build-engines") from None
