"""Signed bundles (issue 10): a station with `bundle_public_key` loads only bundles whose manifest — every
file's checksum and the thresholds — was signed by the engineering PC's private key."""

import json
import stat

import pytest
from typer.testing import CliRunner

from sclvi.cli import app
from sclvi.edge.config import load_runtime_config, open_bundle
from sclvi.errors import BundleError, ConfigError
from sclvi.signing import make_keys, sign_bundle, verify_bundle


def test_sign_verify_and_every_kind_of_tampering(tmp_path, random_bundle):
    secret, public = make_keys(tmp_path / "keys")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        make_keys(tmp_path / "keys")
    b = random_bundle.path
    with pytest.raises(BundleError, match="not signed"):
        verify_bundle(b, public)
    sign_bundle(b, secret)
    verify_bundle(b, public)
    manifest = json.loads((b / "bundle.json").read_text())
    original = (b / "bundle.json").read_text()
    manifest["calibration"] = {"image_threshold": 1e9, "pixel_threshold": 1e9}  # pass every part
    (b / "bundle.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match="does not match"):
        verify_bundle(b, public)
    (b / "bundle.json").write_text(original)
    _, other_public = make_keys(tmp_path / "other")
    with pytest.raises(BundleError, match="does not match"):
        verify_bundle(b, other_public)  # signed by someone else
    (b / "bundle.sig").write_text("{not json")
    with pytest.raises(BundleError, match="malformed"):
        verify_bundle(b, public)


def test_a_station_requiring_signatures_refuses_an_unsigned_bundle(tmp_path, random_bundle):
    from sclvi.deploy.preflight import _bundle_checks

    _, public = make_keys(tmp_path / "keys")
    cfg = load_runtime_config(overrides={"bundle": str(random_bundle.path), "bundle_public_key": str(public),
                                         "cameras": [{"kind": "folder", "path": str(tmp_path)}]})
    with pytest.raises(BundleError, match="not signed"):
        open_bundle(cfg)  # what the supervisor, every worker and `reload` call
    (check,) = _bundle_checks(cfg)
    assert not check.ok and "not signed" in check.detail


def test_cli_signs_and_the_station_loads_it(tmp_path, random_bundle):
    from sclvi.deploy.preflight import _bundle_checks

    runner = CliRunner()
    made = runner.invoke(app, ["signing-keys", str(tmp_path / "keys")])
    assert made.exit_code == 0 and "bundle_signing.pub" in made.output
    signed = runner.invoke(app, ["sign", str(random_bundle.path), "--key", str(tmp_path / "keys" / "bundle_signing.key")])
    assert signed.exit_code == 0 and (random_bundle.path / "bundle.sig").is_file()
    cfg = load_runtime_config(overrides={"bundle": str(random_bundle.path),
                                         "bundle_public_key": str(tmp_path / "keys" / "bundle_signing.pub"),
                                         "cameras": [{"kind": "folder", "path": str(tmp_path)}]})
    assert open_bundle(cfg).path == random_bundle.path
    checks = {c.name: c for c in _bundle_checks(cfg)}
    assert checks["bundle"].ok and checks["bundle signature"].ok
    (random_bundle.path / "mean.npy").write_bytes(b"\x93NUMPY tampered")  # a file changed under a valid signature
    refused = runner.invoke(app, ["sign", str(random_bundle.path), "--key", str(tmp_path / "keys" / "bundle_signing.key")])
    assert refused.exit_code == 2 and "checksum" in refused.output  # never signs a bundle that does not verify
    with pytest.raises(BundleError, match="checksum"):
        open_bundle(cfg)  # the signed manifest's checksums catch it
