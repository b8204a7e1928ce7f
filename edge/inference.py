"""Inference worker process: ring slot -> preprocess -> embed (one engine call) -> k-NN + affinity ->
fused map -> decide -> verdict. Exactly one verdict per frame: the worker and the supervisor's deadline
watchdog race for it through the ring's `claim_verdict`; the loser's result is counted as late."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from PIL import Image

from sclvi.edge.config import RuntimeConfig
from sclvi.edge.decide import decide
from sclvi.edge.messages import Reason, Verdict, verdict_message
from sclvi.edge.pixel_formats import to_rgb
from sclvi.edge.ring import SharedRing
from sclvi.edge.shared import Shared

#: How long a worker may take to load its bundle and engines (at start and on `reload`) before it counts as hung.
LOAD_TIMEOUT_S = 300.0

log = logging.getLogger("sclvi.edge.inference")


def limit_threads(threads: int) -> None:
    """Hold this process to its share of the cores in every pool the scorer uses (numba's, BLAS, faiss's
    OpenMP), not only the encoder's: two workers that each spread their k-NN over every core slow each other
    down. Set before faiss loads (OMP_NUM_THREADS) and for the pools already loaded (threadpoolctl): called
    again once the scorer has warmed up and loaded every library it uses."""
    import os

    import numba
    from threadpoolctl import threadpool_limits

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    threadpool_limits(threads)


def load_scorer(cfg: RuntimeConfig) -> Any:
    """Bundle, backend and scorer, warmed up on a blank frame (JIT compilation, engine allocation) so the
    first real part is not late. `sclvi check` runs exactly this, so it fails where a worker would."""
    from sclvi.edge.config import open_bundle
    from sclvi.engines import load_backend
    from sclvi.scorer import AnomalyScorer

    import os

    bundle = open_bundle(cfg)
    threads = cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.workers)  # no oversubscription
    limit_threads(threads)
    scorer = AnomalyScorer(bundle, load_backend(bundle, cfg.backend, threads))
    scorer.score([np.zeros((*scorer.input_hw, 3), np.uint8)])
    limit_threads(threads)  # the pools of libraries the warm-up loaded (faiss's OpenMP)
    return scorer


def worker_main(cfg: RuntimeConfig, w: int, shared: Shared) -> None:
    from sclvi.edge.logs import child_process_setup
    from sclvi.edge.recorder import Recorder

    child_process_setup()
    row = shared.row_worker(w)
    rings = [SharedRing(spec) for spec in shared.rings]
    generation = shared.generation.value
    scorer = load_scorer(cfg)
    recorder = Recorder(cfg.record_dir, cfg.record_max_mb) if cfg.record_dir else None
    preview_every = 1.0 / cfg.preview_hz if cfg.preview_hz and cfg.telemetry_endpoint else None
    next_preview = 0.0
    beat = shared.heartbeat_index("worker", w)
    shared.beat(beat, cfg.stall_timeout_s)
    for ring in rings:  # blocked behind a hung process holding a ring: not hung itself
        ring.spec.lock.on_wait = lambda: shared.beat(beat, cfg.stall_timeout_s)
    shared.workers_ready[w] = 1
    log.info("worker %d ready (%s)", w, scorer.embedder.backend.name)
    try:
        turn = 0
        while True:
            shared.beat(beat, cfg.stall_timeout_s)  # one frame's inference must fit in it too
            slot = None
            for k in range(len(rings)):  # round robin over cameras
                cam = (turn + k) % len(rings)
                slot = rings[cam].take_ready(w)
                if slot is not None:
                    turn = cam + 1
                    break
            if slot is None:
                if shared.stop_workers.is_set():
                    return
                time.sleep(0.0005)
                continue
            if shared.generation.value != generation:  # `reload` from the control socket
                generation = shared.generation.value
                shared.beat(beat, LOAD_TIMEOUT_S + cfg.stall_timeout_s)  # loading engines is slower than a frame
                scorer = load_scorer(cfg)
                log.info("worker %d reloaded the bundle", w)
            ring = rings[cam]
            h = ring.header[slot]
            seq, frame_id, t_acq = int(h["seq"]), int(h["frame_id"]), int(h["t_acq_ns"])
            trigger = None if h["trigger"] < 0 else int(h["trigger"])
            t_start = time.time_ns()
            acquire = h["acquire_us"] / 1000  # frame arrival -> in the ring
            lat: dict[str, float] = {"acquire": acquire, "queue": (t_start - t_acq) / 1e6 - acquire}
            frame = None
            try:
                t0 = time.perf_counter()
                frame = to_rgb(ring.image(slot))
                model_input = scorer.mapping.to_input(frame)
                t1 = time.perf_counter()
                codes = scorer.embed([model_input])
                t2 = time.perf_counter()
                result = scorer.score_codes(codes.small[0], codes.large[0], lat)
                t3 = time.perf_counter()
                it, pt = shared.image_threshold.value, shared.pixel_threshold.value
                decision = decide(result.score, result.anomaly_map, it, pt, frame.shape[:2], scorer.mapping)
                lat.update(preprocess=1000 * (t1 - t0), embed=1000 * (t2 - t1), decide=1000 * (time.perf_counter() - t3))
                lat["total"] = (time.time_ns() - t_acq) / 1e6
                msg = verdict_message(shared.camera_ids[cam], seq, frame_id, t_acq, decision.verdict, trigger=trigger,
                                      score=result.score, threshold=it, regions=decision.regions, latency_ms=lat,
                                      reason=decision.reason)
            except Exception:
                log.exception("worker %d: inference failed on %s seq %d", w, shared.camera_ids[cam], seq)
                shared.counters.add(row, "inference_errors")
                result = None
                msg = verdict_message(shared.camera_ids[cam], seq, frame_id, t_acq, Verdict.NOT_INSPECTED,
                                      trigger=trigger, reason=Reason.ERROR)
            if ring.claim_verdict(slot):
                shared.send(msg)
                key = {"OK": "verdict_ok", "NG": "verdict_ng"}.get(msg["verdict"])
                if key:
                    shared.counters.add(row, key)
                else:
                    shared.counters.add(row, "not_inspected")
                    shared.counters.add(row, "nis_error")
                placed = None  # the map on the camera frame: made once, for the recorder and the preview
                if recorder and msg["verdict"] != "OK" and frame is not None:
                    placed = camera_map(scorer, result, frame)
                    recorder.save(msg, frame, placed)
                if preview_every is not None and frame is not None and time.monotonic() >= next_preview:
                    next_preview = time.monotonic() + preview_every
                    try:
                        if placed is None:
                            placed = camera_map(scorer, result, frame)
                        shared.send(preview_message(msg, frame, placed, shared.pixel_threshold.value, cfg.preview_px))
                    except Exception:  # a preview must never cost a verdict
                        log.exception("worker %d: preview failed", w)
            else:
                shared.counters.add(row, "late_results")
            ring.release(slot)
    finally:
        shared.alive_until[beat] = 0  # exiting is no hang
        shared.close_sender()
        for ring in rings:
            ring.close()


def camera_map(scorer: Any, result: Any, frame: np.ndarray) -> np.ndarray | None:
    """The fused map placed on the camera frame (inside the roi), for the recorder and the preview."""
    return None if result is None else scorer.mapping.to_camera_map(result.anomaly_map, frame.shape[:2])


def heatmap_rgb(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A jet-coloured heatmap resized to the frame (for the recorder)."""
    from matplotlib import colormaps

    m = anomaly_map / max(float(anomaly_map.max()), 1e-12)
    rgb = (colormaps["jet"](m)[:, :, :3] * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))


def preview_jpeg(frame: np.ndarray, anomaly_map: np.ndarray | None, pixel_threshold: float, longest: int) -> bytes:
    """The frame scaled to `longest` px with pixels above the pixel threshold tinted red (what the
    operator looks at), as JPEG."""
    import io

    h, w = frame.shape[:2]
    scale = min(1.0, longest / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR)).astype(np.float32)
    if anomaly_map is not None and np.isfinite(pixel_threshold) and pixel_threshold > 0:
        m = np.asarray(Image.fromarray(anomaly_map.astype(np.float32)).resize(size, Image.BILINEAR))
        alpha = np.clip(m / pixel_threshold - 0.5, 0.0, 1.0)[:, :, None] * 0.6
        img = img * (1 - alpha) + np.array([255.0, 0.0, 0.0]) * alpha
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def preview_message(msg: dict, frame: np.ndarray, anomaly_map: np.ndarray | None, pixel_threshold: float,
                    longest: int) -> dict:
    """A telemetry preview of one verdict (not a verdict: the publisher only forwards it)."""
    keep = ("camera", "seq", "frame_id", "verdict", "reason", "score", "threshold", "regions", "latency_ms")
    return {"preview": True, **{k: msg.get(k) for k in keep}, "frame_size": [frame.shape[1], frame.shape[0]],
            "jpeg": preview_jpeg(frame, anomaly_map, pixel_threshold, longest)}
