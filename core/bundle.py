"""The model bundle: one directory that carries everything a line needs to inspect a part.

    bundle.json          manifest: format version, full config, training metadata, file hashes, banks
    encoder.safetensors  weights of the main and secondary encoders (float32)
    mean.npy             what is subtracted before the encoder: the training mean per pixel or per channel (preprocess.mean)
    bank_small.sclvibank memory bank of 32-px codes and their grid positions (memory-mapped on load)
    bank_large.sclvibank memory bank of 64-px codes

Loading validates every piece and fails with a message that says what to do, never later with a
shape error deep inside inference. No torch is needed to load a bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from sclvi import __version__
from sclvi.bank_file import BankHeader, read_bank, write_bank
from sclvi.config import Config, config_from_dict, config_to_dict
from sclvi.errors import BundleError, SclviError
from sclvi.images import normalise

FORMAT = "sclvi-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
WEIGHTS = "encoder.safetensors"
MEAN = "mean.npy"
SCALES = ("small", "large")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a bundle is meant to be copied to the line PC
    os.replace(tmp, path)


@dataclass
class ModelBundle:
    """A validated bundle. Weights and banks are read on first use; banks are memory-mapped."""

    path: Path
    config: Config
    manifest: dict[str, Any]
    _weights: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _mean: np.ndarray | None = field(default=None, repr=False)
    _banks: dict[str, tuple[np.ndarray, np.ndarray, BankHeader]] = field(default_factory=dict, repr=False)

    @property
    def weights(self) -> dict[str, np.ndarray]:
        if self._weights is None:
            try:
                self._weights = load_file(str(self.path / WEIGHTS))
            except (SafetensorError, OSError, ValueError) as exc:
                raise BundleError(f"{self.path / WEIGHTS} is corrupt ({exc}): retrain or restore the bundle") from None
        return self._weights

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            mean = _load_npy(self.path / MEAN)
            h, w = self.config.geometry.input_hw
            if mean.shape != (h, w, 3):
                raise BundleError(f"{self.path / MEAN} has shape {mean.shape}, expected ({h}, {w}, 3)")
            self._mean = mean.astype(np.float32)
        return self._mean

    def normalise(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the (3, H, W) encoder input, with this bundle's photometric mode and mean image."""
        return normalise(frame, self.mean, self.config.preprocess.photometric)

    def has_bank(self) -> bool:
        return all(scale in self.manifest.get("banks", {}) for scale in SCALES)

    def bank(self, scale: str) -> np.ndarray:
        """The (count, dim) memory bank of one scale, memory-mapped read-only."""
        return self.bank_data(scale)[0]

    def bank_data(self, scale: str) -> tuple[np.ndarray, np.ndarray, BankHeader]:
        """(codes, grid positions, header) of one scale's bank, checked against the manifest."""
        if scale not in self._banks:
            info = self.manifest.get("banks", {}).get(scale)
            if info is None:
                raise BundleError(f"bundle {self.path} has no {scale} memory bank: build it with `sclvi train`")
            codes, positions, header = read_bank(self.path / info["file"])
            recorded = {k: info.get(k) for k in ("scale", "patch", "stride", "grid", "dim", "count", "dtype")}
            actual = {k: getattr(header, k) for k in recorded}
            if recorded != actual:
                raise BundleError(
                    f"{self.path / info['file']} holds {actual}, the manifest says {recorded}: "
                    "the bank is stale or was swapped, rebuild it"
                )
            self._banks[scale] = (codes, positions, header)
        return self._banks[scale]


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing: restore the bundle or rebuild it")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{path} is truncated or corrupt ({exc}): rebuild the bundle") from None


def save_bundle(
    path: str | Path,
    config: Config,
    weights: dict[str, np.ndarray],
    mean: np.ndarray,
    training: dict[str, Any],
) -> Path:
    """Write weights, mean image and manifest. Banks are added afterwards with `add_bank`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.array(v, dtype=np.float32, order="C") for k, v in weights.items()}, str(path / WEIGHTS))  # keeps 0-d
    np.save(path / MEAN, mean.astype(np.float32))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sclvi_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config_to_dict(config),
        "training": training,
        "files": {name: {"sha256": _sha256(path / name)} for name in (WEIGHTS, MEAN)},
        "banks": {},
    }
    _write_json_atomic(path / MANIFEST, manifest)
    return path


def add_bank(bundle: ModelBundle, codes: np.ndarray, positions: np.ndarray, header: BankHeader) -> None:
    """Store one scale's memory bank and record its header in the manifest."""
    name = f"bank_{header.scale}.sclvibank"
    write_bank(bundle.path / name, codes, positions, header)
    manifest = _read_manifest(bundle.path)
    manifest.setdefault("banks", {})[header.scale] = {"file": name, **asdict(header)}
    manifest["files"][name] = {"sha256": _sha256(bundle.path / name)}  # verified at every load, like the weights
    _write_json_atomic(bundle.path / MANIFEST, manifest)
    bundle.manifest = manifest
    bundle._banks.pop(header.scale, None)


def set_bank_config(bundle: ModelBundle, bank: Any, geometry: Any = None) -> bool:
    """Record the bank settings a rebuilt bank follows (and its geometry, when it was rebuilt at other patch
    strides), and drop the calibration: thresholds set on the old bank's scores do not hold for the new one.
    True when there was a calibration to drop."""
    return _set_config(bundle, {"bank": bank, **({"geometry": geometry} if geometry is not None else {})})


def set_scoring_config(bundle: ModelBundle, scoring: Any) -> bool:
    """Record other scoring settings (k-NN kernel, position window, ...) and drop the calibration, as a
    rebuilt bank does: an approximate search or another window moves the scores. True when one was dropped."""
    return _set_config(bundle, {"scoring": scoring})


def _set_config(bundle: ModelBundle, update: dict[str, Any]) -> bool:
    manifest = _read_manifest(bundle.path)
    config = bundle.config.model_copy(update=update)
    manifest["config"] = config_to_dict(config)
    dropped = manifest.pop("calibration", None) is not None
    _write_json_atomic(bundle.path / MANIFEST, manifest)
    bundle.config, bundle.manifest = config, manifest
    return dropped


def record(bundle: ModelBundle, key: str, value: Any) -> None:
    """Store one top-level manifest entry (e.g. the measured alignment) next to the rest."""
    manifest = _read_manifest(bundle.path)
    manifest[key] = value
    _write_json_atomic(bundle.path / MANIFEST, manifest)
    bundle.manifest = manifest


def register_files(bundle: ModelBundle, files: list[str], engines: dict[str, Any]) -> None:
    """Record new files (checksummed like the weights) and engine metadata in the manifest."""
    manifest = _read_manifest(bundle.path)
    for name in files:
        manifest["files"][name] = {"sha256": _sha256(bundle.path / name)}
    manifest.setdefault("engines", {}).update(engines)
    _write_json_atomic(bundle.path / MANIFEST, manifest)
    bundle.manifest = manifest


def set_calibration(bundle: ModelBundle, calibration: dict[str, Any]) -> None:
    """Store calibrated thresholds (and the statistics they came from) in the manifest."""
    manifest = _read_manifest(bundle.path)
    manifest["calibration"] = calibration
    _write_json_atomic(bundle.path / MANIFEST, manifest)
    bundle.manifest = manifest


def engine_record(bundle: ModelBundle, kind: str) -> dict[str, Any] | None:
    """The manifest's record of an engine kind ("onnx", "tensorrt"), checked to belong to these weights."""
    record = bundle.manifest.get("engines", {}).get(kind)
    if record is None:
        return None
    if record.get("weights_sha256") != bundle.manifest["files"][WEIGHTS]["sha256"]:
        raise BundleError(
            f"the {kind} engines in {bundle.path} were built from other weights: rebuild them with "
            f"`sclvi build-engines {bundle.path}`"
        )
    return record


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise BundleError(f"model bundle {path} does not exist (train one with `sclvi train`)")
    mf = path / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{path} is not a model bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf} is corrupt ({exc}): restore the bundle or retrain") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mf} is not an sclvi bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle {path} has format version {version}; this sclvi ({__version__}) reads version "
            f"{FORMAT_VERSION}: retrain the bundle or install the matching sclvi"
        )
    return manifest


def load_bundle(path: str | Path, verify: bool = True) -> ModelBundle:
    """Open and validate a bundle (manifest, config, file hashes, weight names and shapes)."""
    path = Path(path)
    manifest = _read_manifest(path)
    try:
        config = config_from_dict(manifest.get("config", {}))
    except SclviError as exc:
        raise BundleError(f"bundle {path} has an incompatible config: {exc}") from None
    named = [*manifest.get("files", {}), *(b.get("file", "") for b in manifest.get("banks", {}).values())]
    for name in named:
        if not _inside(path, name):
            raise BundleError(f"{path / MANIFEST} names {name!r}, outside the bundle: refusing it (restore the bundle)")
    for name, info in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            hint = f"`sclvi build-engines {path}`" if name.startswith("engines/") else "restore the bundle or retrain"
            raise BundleError(f"bundle file {f} is missing: {hint}")
        if verify and _sha256(f) != info.get("sha256"):
            hint = f"rebuild with `sclvi build-engines {path}`" if name.startswith("engines/") else "restore or retrain"
            raise BundleError(f"{f} does not match its recorded checksum (corrupt or replaced): {hint}")
    bundle = ModelBundle(path, config, manifest)
    _check_weights(bundle)
    return bundle


def _inside(root: Path, name: Any) -> bool:
    """A manifest path that stays inside the bundle (no absolute paths, no `..` out of it)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        return False
    base = root.resolve()
    return (base / name).resolve().is_relative_to(base)


def _check_weights(bundle: ModelBundle) -> None:
    """The weight file must hold exactly the tensors the config's architecture needs."""
    from sclvi.architecture import expected_shapes  # torch-free

    expected = expected_shapes(bundle.config.encoder)
    got = {k: tuple(v.shape) for k, v in bundle.weights.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise BundleError(
            f"{bundle.path / WEIGHTS} does not fit the bundle's config (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {wrong[:3]}): the weights and config were mixed up"
        )
