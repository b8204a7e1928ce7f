"""The one command line, `sclvi`. Heavy modules are imported inside each command so that
`sclvi --help` is instant and the runtime commands never import torch."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Optional

import click
import typer
from typer.core import TyperGroup

from sclvi import __version__
from sclvi.demo import DEMO_STEPS
from sclvi.errors import ConfigError, DataError, SclviError

app = typer.Typer(
    name="sclvi",
    help="SCL-VI unsupervised visual inspection: train on defect-free images, evaluate, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("sclvi")


class Preset(str, Enum):
    paper = "paper"
    lite = "lite"
    dense = "dense"
    dense_lite = "dense-lite"


class Task(str, Enum):
    scl12 = "scl12"
    jigsaw8 = "jigsaw8"
    none = "none"


class Formula(str, Enum):
    paper = "paper"
    authors = "authors"


class Fusion(str, Enum):
    product = "product"
    sum = "sum"


class ImageScore(str, Enum):
    max = "max"
    top_patch = "top-patch"


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors the user can fix are printed as one line, not a traceback."""
    try:
        yield
    except SclviError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v.value if isinstance(v, Enum) else v
    return out


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sclvi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)


@app.command()
def train(
    data: Path = typer.Argument(..., help="Data set folder in MVTec AD layout (uses train/good)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    preset: Optional[Preset] = typer.Option(
        None, help="Model preset (default: the config file's, else dense-lite, on any machine)."
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (overrides the preset)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default 3000; fewer trains faster and detects less, see README)."),
    max_minutes: Optional[float] = typer.Option(
        None, help="Time budget: a machine too slow for every step within it trains fewer, the schedule shortened to fit "
        "(product presets: 50; 0: every step, however long)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    task: Optional[Task] = typer.Option(None, help="Pretext task: scl12 (paper), jigsaw8 (Patch SVDD), none."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    image_size: Optional[int] = typer.Option(None, help="Square input size frames are resized to (without --roi/--scale)."),
    roi: Optional[str] = typer.Option(
        None, help="Inspect this region x,y,width,height of the camera frame at native resolution, aspect kept "
        "(`sclvi roi DATA` proposes one); frames of another size are then refused, never resized."),
    scale: Optional[float] = typer.Option(None, help="Resize factor of the roi (or of the whole frame), e.g. 0.5."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (0: torch's default)."),
    resume: bool = typer.Option(False, help="Continue from the bundle's checkpoint."),
    bank: bool = typer.Option(True, help="Build the memory bank after training."),
) -> None:
    """Self-supervised training on defect-free images; writes a model bundle with its memory bank."""
    with _user_errors():
        from sclvi.config import load_config
        from sclvi.console import pretext_summary
        from sclvi.train.make_bundle import train_and_bank

        overrides = _drop_none(
            {
                "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "task": task, "seed": seed, "threads": threads,
                          "max_minutes": max_minutes},
                "geometry": {"image_size": image_size, "roi": _parse_roi(roi), "scale": scale,
                             "frame": _data_frame(data) if roi is not None or scale is not None else None},
            }
        )
        cfg = load_config(config, preset.value if preset else None, overrides)
        log.info("preset %s; geometry: %s", cfg.preset, cfg.geometry.describe())
        bundle = train_and_bank(cfg, data, out, resume, bank)
        typer.echo(f"bundle: {out}")
        typer.echo(pretext_summary(bundle.manifest["training"]) + f"; curve: {Path(out) / 'training_curve.png'}")
        if _labelled(data):
            typer.echo(f"labelled test parts in {data}: `sclvi eval {out} {data} --floor` scores them beside the "
                       "raw-pixel floor (what learning adds on your parts)")


def _labelled(data: Path) -> bool:
    """Whether `sclvi eval` would take this training folder as a labelled test set (read_dataset's own check)."""
    from sclvi.dataset import read_dataset

    try:
        read_dataset(data)
    except DataError:
        return False
    return True


def _parse_roi(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"--roi {text!r}: expected four integers x,y,width,height in frame pixels")
    return values


def _data_frame(data: Path) -> list[int]:
    """The camera frame size of a data set's training images (all must share it)."""
    from sclvi.dataset import read_dataset
    from sclvi.roi import frame_size_of

    return list(frame_size_of(read_dataset(data, need_test=False).train))


@app.command("roi")
def roi_cmd(
    data: Path = typer.Argument(..., help="Data set folder in MVTec AD layout (uses train/good)."),
    scale: float = typer.Option(1.0, help="Resize factor the roi will be trained at."),
    preset: Optional[Preset] = typer.Option(None, help="Model preset whose patch strides the roi must tile."),
    margin: int = typer.Option(16, help="Pixels kept around the part."),
    figure: Optional[Path] = typer.Option(None, help="Write the mean frame with the roi drawn on it here (PNG)."),
) -> None:
    """Propose a region of interest around the part in the training frames, for you to confirm."""
    with _user_errors():
        from sclvi.config import DEFAULT_PRESET, build_config
        from sclvi.dataset import read_dataset
        from sclvi.roi import frame_size_of
        from sclvi.roi_propose import propose_roi, save_roi_figure
        from sclvi.train.pretext import grid_span

        images = read_dataset(data, need_test=False).train
        frame_size_of(images)
        cfg = build_config(preset.value if preset else DEFAULT_PRESET)
        p = propose_roi(images, cfg.geometry, scale, margin,
                        min_side=grid_span(cfg.geometry.large_patch, cfg.train.jitter_frac))
        roi = ",".join(str(v) for v in p.roi)
        found = ("no part stands out from the background: the whole frame" if p.part_box is None else
                 f"part at {list(p.part_box)}" + ("" if p.cover < 1 else ", filling most of the frame: the whole frame"))
        typer.echo(f"frames {p.frame[0]}x{p.frame[1]}; {found}; proposed roi {roi} ({100 * p.cover:.0f}% of the frame, "
                   f"model input {round(p.roi[2] * scale)}x{round(p.roi[3] * scale)} px at scale {scale:g})")
        if figure is not None:
            save_roi_figure(figure, p)
            typer.echo(f"figure: {figure}")
        typer.echo(f"check it, then: sclvi train {data} --out BUNDLE --roi {roi} --scale {scale:g}")


def _updated_section(config: Any, section: str, update: dict[str, Any]) -> Any:
    """One config section with `update` applied, validated as a whole config is (a bad value: a ConfigError
    naming the key), for commands that change a trained bundle's settings."""
    from sclvi.config import config_from_dict, config_to_dict

    merged = {**config_to_dict(config), section: {**getattr(config, section).model_dump(), **update}}
    return getattr(config_from_dict(merged), section)


@app.command("bank")
def bank_cmd(
    bundle: Path = typer.Argument(..., help="Trained model bundle directory."),
    data: Path = typer.Argument(..., help="Data set folder in MVTec AD layout: its train/good images fill the bank."),
    max_images: Optional[int] = typer.Option(
        None, help="Build the bank from a seeded subset of this many images (0: every image; default: as the bundle says)."),
    coreset_ratio: Optional[float] = typer.Option(None, help="Keep this fraction of the codes (1: all)."),
    neighbourhood: Optional[int] = typer.Option(
        None, help="Average each code with its k x k neighbouring patches, in the bank and in every query (odd; 1: the "
        "paper; product presets: 3). Bundles trained before this setting existed have 1."),
    retrieve: Optional[int] = typer.Option(
        None, help="Search each frame only among the codes of its K most similar bank images (a line with several "
        "variants in one bank; product presets: 50; off for a coreset bank); 0: every image, the paper."),
    level_norm: Optional[float] = typer.Option(
        None, help="Divide each frame's map by the leave-one-out score level of the bank images it retrieved, to this "
        "power (a rare variant of good part stops scoring high all over; product presets: 0.5; needs --retrieve); 0: "
        "off, the paper. Measured while the bank is built (one frame's scoring per image, up to 256)."),
) -> None:
    """(Re)build a trained bundle's memory bank: after `train --no-bank`, with more good parts, or with another
    subset size or coreset. No retraining; calibrated thresholds are dropped (calibrate again)."""
    with _user_errors():
        from sclvi.bundle import load_bundle
        from sclvi.dataset import read_dataset
        from sclvi.engines import load_backend
        from sclvi.memory_bank import bank_images, rebuild_memory_bank
        from sclvi.signing import SIGNATURE

        b = load_bundle(bundle)
        update: dict[str, Any] = {}
        if max_images is not None:
            update["max_images"] = max_images or None
        if coreset_ratio is not None:
            update["coreset_ratio"] = coreset_ratio
        if neighbourhood is not None:
            update["neighbourhood"] = neighbourhood
        if retrieve is not None:
            update["retrieve"] = retrieve
        if level_norm is not None:
            update["level_norm"] = level_norm
        bank = _updated_section(b.config, "bank", update)
        images = read_dataset(data, need_test=False).train
        small, large = rebuild_memory_bank(b, load_backend(b, "torch"), images, bank)
        typer.echo(f"memory bank of {bundle}: {len(small):,} + {len(large):,} codes (32 / 64 px) from "
                   f"{len(bank_images(images, bank.max_images, bank.seed))} of {len(images)} images")
        if (bundle / SIGNATURE).is_file():
            typer.echo(f"{bundle / SIGNATURE} no longer matches the bundle: sign it again (`sclvi sign`)")


# Scoring options shared by `eval` (try them on labelled parts) and `scoring` (keep them in the bundle).
_ETA = typer.Option(None, help="Memory items fused per patch (1 = plain nearest neighbour).")
_LAM = typer.Option(None, help="Clip lambda of the affinity weights.")
_FORMULA = typer.Option(None, help="paper: ||E(p) - p_fused||; authors: sum of weighted distances.")
_FUSION = typer.Option(None, help="How the two scales' maps combine.")
_IMAGE_SCORE = typer.Option(
    None, help="max: the map's highest pixel (the paper, every preset); top-patch: the mean of its highest 32x32 px "
    "worth, wherever they lie (parts whose defects spread wide).")


def _scoring_update(eta: Optional[int], lam: Optional[float], formula: Optional[Formula], fusion: Optional[Fusion],
                    image_score: Optional[ImageScore]) -> dict[str, Any]:
    return _drop_none({"eta": eta, "lam": lam, "formula": formula.value if formula else None,
                       "scale_fusion": fusion.value if fusion else None,
                       "image_score": image_score.value if image_score else None})


@app.command("scoring")
def scoring_cmd(
    bundle: Path = typer.Argument(..., help="Model bundle directory."),
    eta: Optional[int] = _ETA,
    lam: Optional[float] = _LAM,
    formula: Optional[Formula] = _FORMULA,
    fusion: Optional[Fusion] = _FUSION,
    image_score: Optional[ImageScore] = _IMAGE_SCORE,
    knn: Optional[str] = typer.Option(None, help="k-NN kernel: auto, numpy, numba, cuda, faiss-ivf."),
    ivf_nprobe: Optional[int] = typer.Option(None, help="faiss-ivf: clusters searched per query (recall vs speed)."),
) -> None:
    """Show the bundle's scoring settings, or change them for the line (what `sclvi eval` options tried): no
    retraining, no new bank; calibrated thresholds are dropped (scores move: calibrate again)."""
    with _user_errors():
        from sclvi.bundle import load_bundle, set_scoring_config
        from sclvi.signing import SIGNATURE

        b = load_bundle(bundle)
        update = {**_scoring_update(eta, lam, formula, fusion, image_score),
                  **_drop_none({"knn": knn, "ivf_nprobe": ivf_nprobe})}
        if update:
            if set_scoring_config(b, _updated_section(b.config, "scoring", update)):
                typer.echo("calibrated thresholds dropped (set on the old scores): run `sclvi calibrate` again")
            if (bundle / SIGNATURE).is_file():
                typer.echo(f"{bundle / SIGNATURE} no longer matches the bundle: sign it again (`sclvi sign`)")
        typer.echo(f"scoring of {bundle}: " + ", ".join(f"{k} {v}" for k, v in b.config.scoring.model_dump().items()))


@app.command("eval")
def evaluate_cmd(
    bundle: Path = typer.Argument(..., help="Model bundle directory."),
    data: Path = typer.Argument(..., help="Data set folder in MVTec AD layout (uses test/ and ground_truth/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: BUNDLE/eval-<data name>)."),
    eta: Optional[int] = _ETA,
    lam: Optional[float] = _LAM,
    formula: Optional[Formula] = _FORMULA,
    fusion: Optional[Fusion] = _FUSION,
    image_score: Optional[ImageScore] = _IMAGE_SCORE,
    backend: str = typer.Option("auto", help="Encoder backend."),
    overlays: int = typer.Option(6, help="How many image | heatmap | ground-truth PNGs to write."),
    floor: bool = typer.Option(False, "--floor", help="Also score the raw-pixel floor (patch 1-NN on pixels, no "
                               "learning) on the same parts and training images: what the model adds over it. An exact "
                               "search of every training patch: 0.3 s an image against 200 training images, 1.6 s "
                               "against 802, on 2 cores."),
) -> None:
    """Image AUROC, pixel AUROC and PRO on a labelled test set, with overlays and a ROC plot."""
    with _user_errors():
        from sclvi.bundle import load_bundle
        from sclvi.console import print_report
        from sclvi.dataset import read_dataset
        from sclvi.engines import load_backend
        from sclvi.evaluate import evaluate

        b = load_bundle(bundle)
        ds = read_dataset(data)
        scoring = b.config.scoring.model_copy(update=_scoring_update(eta, lam, formula, fusion, image_score))
        out = out or bundle / f"eval-{ds.root.name}"
        report = evaluate(b, ds, load_backend(b, backend), out, scoring=scoring, n_overlays=overlays, floor=floor)
        print_report(report)
        typer.echo(f"report: {out / 'metrics.json'}; overlays: {out / 'overlays'}")


@app.command("build-engines")
def build_engines(
    bundle: Path = typer.Argument(..., help="Model bundle directory."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="Also build FP16 TensorRT engines (run on the target GPU)."),
    max_frames: int = typer.Option(1, help="Largest batch, in frames, the TensorRT profiles accept."),
    check_data: Optional[Path] = typer.Option(None, help="Data set whose train/good images also check the export."),
) -> None:
    """Export both encoders to ONNX (FP32 and FP16), check them against torch, optionally build TensorRT.

    On a target without torch (a Jetson), `--tensorrt` builds from the ONNX graphs already in the bundle:
    export them on the training machine first."""
    with _user_errors():
        from sclvi.bundle import engine_record, load_bundle
        from sclvi.dataset import read_dataset
        from sclvi.engines import available_backends

        b = load_bundle(bundle)
        if "torch" in available_backends():
            from sclvi.engines.export import export_onnx

            images = read_dataset(check_data, need_test=False).train if check_data else None
            record = export_onnx(b, images)
            for key, value in record["checks"].items():
                typer.echo(f"  {key}: {value:.3g}")
        elif not tensorrt or engine_record(b, "onnx") is None:
            raise SclviError(
                "exporting ONNX needs torch (pip install 'sclvi[train]'): run `sclvi build-engines` on the training "
                "machine, copy the bundle here, then `sclvi build-engines --tensorrt`"
            )
        else:
            typer.echo("torch is not installed: building TensorRT engines from the bundle's ONNX graphs")
        if tensorrt:
            from sclvi.engines.tensorrt_build import build_tensorrt

            build_tensorrt(load_bundle(bundle), max_frames=max_frames)
        typer.echo(f"engines: {bundle / 'engines'}")


@app.command()
def calibrate(
    bundle: Path = typer.Argument(..., help="Model bundle directory."),
    good: Path = typer.Option(..., help="Folder of held-out defect-free images (not the training images)."),
    target_frr: float = typer.Option(0.005, help="Target false-reject rate of good parts (0.005 = 0.5%)."),
    pixel_fpr: float = typer.Option(0.001, help="Fraction of good pixels allowed above the region threshold."),
    defective: Optional[Path] = typer.Option(None, help="Optional folder of defective images for the plot."),
    backend: str = typer.Option("auto", help="Encoder backend."),
) -> None:
    """Set the image and pixel thresholds from held-out good images; writes BUNDLE/calibration.png."""
    with _user_errors():
        from sclvi.bundle import load_bundle
        from sclvi.calib.calibrate import calibrate as run, list_images
        from sclvi.engines import load_backend

        b = load_bundle(bundle)
        cal = run(b, load_backend(b, backend), list_images(good), target_frr, pixel_fpr,
                  list_images(defective) if defective else None, bundle / "calibration.png")
        typer.echo(f"image threshold {cal.image_threshold:.5g}, pixel threshold {cal.pixel_threshold:.5g} "
                   f"({cal.n_good} good images); plot: {bundle / 'calibration.png'}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Runtime config (YAML): bundle, cameras, workers, endpoints, deadline."),
) -> None:
    """Run the edge runtime: grab, inspect, and send a verdict for every frame to the PLC over ZeroMQ."""
    with _user_errors():
        from sclvi.edge.config import load_runtime_config
        from sclvi.edge.supervisor import Runtime

        totals = Runtime(load_runtime_config(config)).run()
        typer.echo(json.dumps({k: v for k, v in totals.items() if v}))
    if totals.get("pending"):
        typer.secho(f"error: {totals['pending']} verdicts were never acknowledged by the PLC bridge", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def check(
    config: Path = typer.Argument(..., help="Runtime config (YAML) of the line to check."),
) -> None:
    """Preflight a target machine: bundle, calibration, backend and engines, shared memory, cameras, sockets."""
    with _user_errors():
        from rich.console import Console
        from rich.table import Table

        from sclvi.deploy.preflight import passed, preflight
        from sclvi.edge.config import load_runtime_config

        checks = preflight(load_runtime_config(config))
        table = Table(title=f"preflight: {config}")
        for col in ("check", "", "detail"):
            table.add_column(col)
        for c in checks:
            mark = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.fatal else "[yellow]warn[/]")
            table.add_row(c.name, mark, c.detail)
        Console().print(table)
        if not passed(checks):
            raise typer.Exit(1)


@app.command("signing-keys")
def signing_keys(
    folder: Path = typer.Argument(..., help="Folder for the new key pair (the private key stays on this PC)."),
) -> None:
    """Make an Ed25519 key pair for signing bundles: the .pub goes to stations (bundle_public_key)."""
    with _user_errors():
        from sclvi.signing import make_keys

        secret, public = make_keys(folder)
        typer.echo(f"private key: {secret} (0600: keep it on the engineering PC)\npublic key: {public} "
                   "(copy to each station; bundle_public_key in its config)")


@app.command("opcua-certs")
def opcua_certs(
    folder: Path = typer.Argument(..., help="Folder for the bridge's OPC UA certificate; trusted/ in it takes the clients'."),
    host: Optional[str] = typer.Option(None, help="Host name the PLC / SCADA reaches the bridge by (default: this one's)."),
    client: Optional[str] = typer.Option(None, help="Also make a client certificate of this name, already trusted (tests, "
                                                    "simple clients; PLCs and SCADA bring their own)."),
) -> None:
    """Make the bridge's self-signed OPC UA application certificate (opcua_security sign / sign-and-encrypt)."""
    with _user_errors():
        from sclvi.plc.opcua_security import SERVER_URI, make_certificate

        cert, key = make_certificate(folder, "bridge", SERVER_URI, host)
        trusted = folder / "trusted"
        trusted.mkdir(exist_ok=True)
        typer.echo(f"opcua_certificate: {cert}\nopcua_private_key: {key}  (0600)\nopcua_trusted_clients: {trusted}  "
                   "(copy each PLC / SCADA client certificate here; give them the bridge certificate to trust)")
        if client:
            import shutil

            ccert, ckey = make_certificate(folder, client, f"urn:sclvi:client:{client}", host, client=True)
            shutil.copy(ccert, trusted / ccert.name)
            typer.echo(f"client certificate: {ccert} (a copy in trusted/), its key: {ckey} - both go to the client")


@app.command()
def sign(
    bundle: Path = typer.Argument(..., help="Model bundle directory (sign last: calibrate and build-engines change it)."),
    key: Path = typer.Option(..., "--key", help="Private key from `sclvi signing-keys`."),
) -> None:
    """Sign a bundle's manifest (which checksums every file and holds the thresholds) for the stations."""
    with _user_errors():
        from sclvi.bundle import load_bundle
        from sclvi.signing import sign_bundle

        load_bundle(bundle)  # never sign a bundle whose files do not match its manifest
        typer.echo(f"signature: {sign_bundle(bundle, key)}")


class ControlCommand(str, Enum):
    status = "status"
    stats = "stats"
    pause = "pause"
    resume = "resume"
    reload = "reload"
    set_threshold = "set_threshold"


@app.command()
def ctl(
    config: Path = typer.Argument(..., help="Runtime config (YAML) of the running station."),
    command: ControlCommand = typer.Argument(..., help="What to ask or tell the runtime."),
    image: Optional[float] = typer.Option(None, help="set_threshold: new image threshold."),
    pixel: Optional[float] = typer.Option(None, help="set_threshold: new pixel threshold."),
    token: Optional[str] = typer.Option(
        None, envvar="SCLVI_CONTROL_TOKEN", help="The station's control_token (needed by pause, resume, reload, "
        "set_threshold); default: $SCLVI_CONTROL_TOKEN."),
    timeout_s: float = typer.Option(5.0, help="How long to wait for the answer."),
) -> None:
    """Send one command to a running station over its control socket (ipc:// by default) and print the answer."""
    with _user_errors():
        from sclvi.edge.config import load_runtime_config
        from sclvi.edge.control_client import ask_control

        cfg = load_runtime_config(config)
        request: dict[str, Any] = {"cmd": command.value}
        if command is ControlCommand.set_threshold:
            if image is None and pixel is None:
                raise ConfigError("set_threshold needs --image and/or --pixel")
            request.update(_drop_none({"image": image, "pixel": pixel}))
        if token:
            request["token"] = token
        reply = ask_control(cfg, request, int(1000 * timeout_s))
        typer.echo(json.dumps(reply, indent=2))
        if reply.get("ok", True) is False:  # `stats` answers bare counters
            raise typer.Exit(1)


@app.command()
def keys(
    folder: Path = typer.Argument(..., help="New folder for the keys (0700; never overwritten)."),
) -> None:
    """Make ZeroMQ CURVE certificates for one station: station, bridge, operator, and authorized/ (their public halves)."""
    with _user_errors():
        from sclvi.edge.curve import make_keys

        made = make_keys(folder)
    typer.echo("\n".join(f"{party}: {path}" for party, path in made.items()))
    typer.echo(f"runtime config:  curve: {{secret_key: {made['station']}, server_key: {folder / 'bridge.key'}, "
               f"authorized: {folder / 'authorized'}}}")
    typer.echo(f"bridge section:  curve: {{secret_key: {made['bridge']}, authorized: {folder / 'authorized'}}}")


@app.command()
def listen(
    endpoint: str = typer.Option("tcp://127.0.0.1:5555", help="Where to bind (the runtime's verdict_endpoint)."),
    count: Optional[int] = typer.Option(None, help="Exit after this many verdicts."),
    timeout_s: float = typer.Option(0, help="Exit after this long without a verdict (0: never)."),
    raw: bool = typer.Option(False, "--json", help="Print each verdict as one JSON line."),
    curve_secret: Optional[Path] = typer.Option(None, help="CURVE: our certificate (bridge.key_secret from `sclvi keys`)."),
    curve_authorized: Optional[Path] = typer.Option(None, help="CURVE: folder of station certificates allowed to send."),
) -> None:
    """Stand in for the PLC: receive and acknowledge verdicts, print one line each."""
    from sclvi.edge.listener import VerdictListener, format_verdict

    curve = None
    if curve_secret is not None:
        with _user_errors():
            from sclvi.edge.curve import CurveConfig, check

            curve = CurveConfig(secret_key=str(curve_secret), authorized=str(curve_authorized) if curve_authorized else None)
            check(curve, serves=True, connects=False)
    listener = VerdictListener(endpoint, curve=curve)
    got = 0
    try:
        while count is None or got < count:
            v = listener.receive(int(timeout_s * 1000) if timeout_s else 1000)
            if v is None:
                if timeout_s:
                    break
                continue
            got += 1
            typer.echo(json.dumps(v) if raw else format_verdict(v))
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


@app.command()
def view(
    config: Path = typer.Argument(..., help="Runtime config (YAML) of the station to watch."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (loopback by default)."),
    port: int = typer.Option(8080, help="HTTP port."),
) -> None:
    """The operator's live page: last parts with heatmaps, counters and yield, latency, alarms, pause and threshold."""
    with _user_errors():
        from sclvi.edge.config import load_runtime_config
        from sclvi.view.app import serve

        cfg = load_runtime_config(config)
        typer.echo(f"live view: http://{host}:{port}/  (Ctrl-C to stop)")
        serve(cfg, host, port)


@app.command()
def bridge(
    config: Path = typer.Argument(..., help="Bridge config (YAML; a station config's `bridge:` section works too)."),
) -> None:
    """The PLC bridge: take verdicts from the runtime, write each to the PLC over Modbus TCP, then acknowledge it."""
    import signal
    import threading

    with _user_errors():
        from sclvi.plc.bridge import Bridge
        from sclvi.plc.config import load_bridge_config

        cfg = load_bridge_config(config)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        b = Bridge(cfg)
        typer.echo(f"bridge: verdicts from {cfg.verdict_endpoint} -> {cfg.mode} {cfg.host}:{cfg.port} "
                   f"(cameras {', '.join(cfg.cameras)})")
        try:
            stats = b.serve(stop)
        except KeyboardInterrupt:
            stats = dict(b.stats)
        finally:
            b.close()
        typer.echo(json.dumps(stats))


class _Benchmarks(TyperGroup):
    """`sclvi bench NAME ...`: the typer app of sclvi.benchmarks.NAME (`-` read as `_`), imported only when it is run
    or listed: benchmarks import what the runtime's commands never need, and every `sclvi` start would pay for it."""

    names = ("quality", "knn", "encoders", "latency", "soak", "faults", "knn-quality", "aspect")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.names:
            return None
        import importlib

        command = typer.main.get_command(importlib.import_module(f"sclvi.benchmarks.{cmd_name.replace('-', '_')}").app)
        command.name = cmd_name
        run = command.callback

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with _user_errors():  # a missing data set or a bad bundle: one line, as every other command says it
                return run(*args, **kwargs)

        command.callback = guarded
        return command


bench = typer.Typer(cls=_Benchmarks, help="Benchmarks that print figures and write reports to benchmarks/reports/.",
                    no_args_is_help=True)
app.add_typer(bench, name="bench")


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the data set(s) into."),
    cls: list[str] = typer.Option(["texture", "object"], "--class", help="Synthetic class (repeatable)."),
    size: int = typer.Option(256, help="Image side in pixels."),
    n_train: int = typer.Option(40, help="Defect-free training images."),
    n_test_good: int = typer.Option(10, help="Defect-free test images."),
    n_test_defect: int = typer.Option(5, help="Test images per defect type."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write seeded synthetic inspection data in the MVTec AD layout (with masks)."""
    from sclvi.synthetic import write_synthetic

    for c in cls:
        with _user_errors():
            try:
                path = write_synthetic(out, c, size, n_train, n_test_good, n_test_defect, seed)
            except ValueError as exc:
                raise SclviError(str(exc)) from None
        typer.echo(f"wrote {path}")


@app.command()
def demo(
    workdir: Optional[Path] = typer.Option(None, help="Where data, bundle and report go (default: a temp folder)."),
    cls: str = typer.Option("object", "--class", help="Synthetic class: object or texture."),
    steps: int = typer.Option(DEMO_STEPS, help="Training steps of batch 8 (about a minute on 2 cores; the whole demo "
                              "stays under 2 min)."),
    line: bool = typer.Option(True, help="End by running the edge runtime on a replay of the test images."),
) -> None:
    """Synthetic data -> train the CPU preset (dense-lite) -> memory bank -> evaluate -> table and overlays."""
    with _user_errors():
        from sclvi.demo import run_demo

        run_demo(workdir or Path(tempfile.mkdtemp(prefix="sclvi-demo-")), cls, steps, line)


def main() -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S", level=logging.INFO
    )
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
