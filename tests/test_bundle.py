"""Bundle round trip and clear errors for missing, corrupt and mismatched bundles."""

import json

import numpy as np
import pytest

from conftest import make_bundle, tiny_config
from sclvi.bundle import load_bundle
from sclvi.errors import BundleError


def test_round_trip(random_bundle):
    again = load_bundle(random_bundle.path)
    assert again.config == random_bundle.config
    for k, v in random_bundle.weights.items():
        np.testing.assert_array_equal(again.weights[k], v)
    np.testing.assert_array_equal(again.mean, random_bundle.mean)
    small = again.bank("small")
    assert isinstance(small, np.memmap)  # memory-mapped, not read into RAM
    assert small.shape == (6 * 17 * 17, 16) and again.bank("large").shape == (6 * 3 * 3, 16)
    info = again.manifest["banks"]["large"]
    assert (info["patch"], info["stride"], info["dim"], info["dtype"]) == (64, 16, 16, "float32")


def test_missing_bundle_and_manifest(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(tmp_path / "empty")


def test_corrupt_weights_fail_the_checksum(tmp_path):
    b = make_bundle(tmp_path / "b", tiny_config())
    f = b.path / "encoder.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(b.path)


def test_corrupt_manifest_and_future_format(tmp_path):
    b = make_bundle(tmp_path / "b", tiny_config())
    mf = b.path / "bundle.json"
    manifest = json.loads(mf.read_text())
    mf.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(b.path)
    mf.write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(b.path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    b = make_bundle(tmp_path / "b", tiny_config())
    mf = b.path / "bundle.json"
    manifest = json.loads(mf.read_text())
    manifest["config"]["encoder"]["embed_dim"] = 32
    mf.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not fit the bundle's config"):
        load_bundle(b.path)


def test_unknown_config_key_in_bundle(tmp_path):
    b = make_bundle(tmp_path / "b", tiny_config())
    mf = b.path / "bundle.json"
    manifest = json.loads(mf.read_text())
    manifest["config"]["scoring"]["colour"] = "red"
    mf.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="scoring.colour"):
        load_bundle(b.path)


def test_bank_file_header_and_positions(random_bundle):
    codes, positions, header = random_bundle.bank_data("small")
    assert (header.scale, header.patch, header.stride, header.grid, header.count) == ("small", 32, 4, [17, 17], 6 * 289)
    assert positions.dtype == np.int16 and positions.max() == 16
    assert positions[:289].tolist() == [[r, c] for r in range(17) for c in range(17)]


def test_truncated_swapped_and_missing_bank(random_bundle):
    small = random_bundle.path / "bank_small.sclvibank"
    large = random_bundle.path / "bank_large.sclvibank"
    data = small.read_bytes()
    small.write_bytes(data[:-100])
    with pytest.raises(BundleError, match="checksum"):  # banks are checksummed like the weights
        load_bundle(random_bundle.path)
    # without the checksum pass (verify=False) the bank reader still refuses each fault by itself
    with pytest.raises(BundleError, match="truncated or corrupt"):
        load_bundle(random_bundle.path, verify=False).bank("small")
    small.write_bytes(b"garbage!" + data[8:])
    with pytest.raises(BundleError, match="bad magic"):
        load_bundle(random_bundle.path, verify=False).bank("small")
    small.write_bytes(large.read_bytes())  # the other scale's file under this name
    with pytest.raises(BundleError, match="stale or was swapped"):
        load_bundle(random_bundle.path, verify=False).bank("small")
    small.unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(random_bundle.path)


def test_bundle_without_bank_says_how_to_build_it(tmp_path):
    b = make_bundle(tmp_path / "b", tiny_config())
    assert not b.has_bank()
    with pytest.raises(BundleError, match="sclvi train"):
        b.bank("small")
