"""Export both encoders of a bundle to ONNX (FP32, and FP16 with FP32 inputs/outputs) and check them.

The FP16 graphs are what TensorRT 11 consumes (it dropped BuilderFlag.FP16: precision comes from the
graph); TensorRT 10.3 (JetPack 6) builds from them too. Needs torch (the `train` extra).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxconverter_common import float16

from sclvi.bundle import WEIGHTS, ModelBundle, register_files
from sclvi.geometry import TwoScaleGeometry
from sclvi.roi import read_input
from sclvi.model import DenseFrameEncoder, build_model, load_numpy_state

log = logging.getLogger(__name__)

OPSET = 17
ENGINE_DIR = "engines"
#: name -> (input name, output name); both have a dynamic batch axis
GRAPHS = {"main": ("patches", "codes"), "secondary": ("grids", "codes")}
FRAME_GRAPH = ("frames", "small", "large")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, names: tuple[str, ...]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and shape-inference chatter
        torch.onnx.export(
            module, (example,), str(path), input_names=[names[0]], output_names=list(names[1:]),
            dynamic_axes={n: {0: "batch"} for n in names}, opset_version=OPSET, dynamo=False,
        )
    onnx.checker.check_model(str(path))


def _to_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and arithmetic, FP32 inputs and outputs (casts at the graph's edges)."""
    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def export_onnx(bundle: ModelBundle, check_images: list[Path] | None = None) -> dict[str, Any]:
    """Write engines/{main,secondary}{,.fp16}.onnx into the bundle, check them, record them."""
    import onnxruntime as ort

    cfg = bundle.config
    model = build_model(cfg.encoder)
    load_numpy_state(model, bundle.weights)
    model.eval()
    out = bundle.path / ENGINE_DIR
    out.mkdir(exist_ok=True)
    dim = cfg.encoder.embed_dim
    examples = {"main": torch.zeros(2, 3, 32, 32), "secondary": torch.zeros(2, dim, 2, 2)}
    files: dict[str, str] = {}
    for name, module in (("main", model.main), ("secondary", model.secondary)):
        fp32 = out / f"{name}.onnx"
        _export(module, examples[name], fp32, GRAPHS[name])
        _to_fp16(fp32, out / f"{name}.fp16.onnx")
        files[name] = f"{ENGINE_DIR}/{name}.onnx"
        files[f"{name}.fp16"] = f"{ENGINE_DIR}/{name}.fp16.onnx"
    if cfg.encoder.family == "dense":  # both scales of a whole frame from one graph
        g = cfg.geometry
        frame_model = DenseFrameEncoder(model, g.small_stride, g.large_stride).eval()
        example = torch.zeros(1, 3, *g.input_hw)
        _export(frame_model, example, out / "frame.onnx", FRAME_GRAPH)
        _to_fp16(out / "frame.onnx", out / "frame.fp16.onnx")
        files["frame"], files["frame.fp16"] = f"{ENGINE_DIR}/frame.onnx", f"{ENGINE_DIR}/frame.fp16.onnx"

    # Checks: ONNX Runtime against torch (FP32), and the FP16 graph against the FP32 graph.
    rng = np.random.default_rng(0)
    small = rng.normal(scale=0.5, size=(256, 3, 32, 32)).astype(np.float32)
    if check_images:
        geometry = TwoScaleGeometry.from_config(cfg.geometry)
        real = [geometry.small.patches(bundle.normalise(read_input(p, cfg.geometry))) for p in check_images[:2]]
        small = np.concatenate([small, np.concatenate([r.reshape(-1, 3, 32, 32) for r in real])[::7]])
    with torch.no_grad():
        ref_small = model.main(torch.from_numpy(small)).numpy()
        grids = np.ascontiguousarray(ref_small[: (len(ref_small) // 4) * 4].reshape(-1, 2, 2, dim).transpose(0, 3, 1, 2))
        ref_grid = model.secondary(torch.from_numpy(grids)).numpy()
    checks: dict[str, float] = {}
    for name, x, ref in (("main", small, ref_small), ("secondary", grids, ref_grid)):
        outs = {}
        for variant in ("", ".fp16"):
            sess = ort.InferenceSession(str(out / f"{name}{variant}.onnx"), providers=["CPUExecutionProvider"])
            outs[variant] = sess.run(None, {GRAPHS[name][0]: x})[0]
        checks[f"{name}_fp32_max_abs_diff"] = float(np.abs(outs[""] - ref).max())
        a, b = outs[""], outs[".fp16"]
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        checks[f"{name}_fp16_min_cosine"] = float(cos.min())
    if "frame" in files:
        frames = rng.normal(scale=0.5, size=(1, 3, *cfg.geometry.input_hw)).astype(np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in frame_model(torch.from_numpy(frames))]
        sess = ort.InferenceSession(str(out / "frame.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"frames": frames})
        checks["frame_fp32_max_abs_diff"] = float(max(np.abs(a - b).max() for a, b in zip(got, ref)))
    if max(v for k, v in checks.items() if k.endswith("max_abs_diff")) > 1e-4:
        raise RuntimeError(f"ONNX export disagrees with torch: {checks}")
    record = {
        "opset": OPSET,
        "files": files,
        "weights_sha256": bundle.manifest["files"][WEIGHTS]["sha256"],
        "checks": checks,
        "patches_per_frame": TwoScaleGeometry.from_config(cfg.geometry).small.count,
    }
    register_files(bundle, list(files.values()), {"onnx": record})
    log.info("ONNX engines written to %s: %s", out, checks)
    return record
