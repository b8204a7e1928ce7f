"""Acquisition process (one per camera): grab, copy into a free ring slot, hand the slot to inference.

Never blocks on a full ring: the frame gets NOT_INSPECTED (ring_full) at once. A lost camera is
reopened with exponential back-off; the sequence number keeps counting across reconnects.
"""

from __future__ import annotations

import logging

from sclvi.edge.config import RuntimeConfig
from sclvi.edge.messages import Reason
from sclvi.edge.ring import SharedRing
from sclvi.edge.shared import Shared
from sclvi.edge.sources import SourceEnded, make_source

log = logging.getLogger("sclvi.edge.acquisition")


def acquisition_main(cfg: RuntimeConfig, cam: int, shared: Shared) -> None:
    from sclvi.edge.logs import child_process_setup

    child_process_setup()
    src_cfg = cfg.cameras[cam]
    ring = SharedRing(shared.rings[cam])
    row = shared.row_acquisition(cam)
    count = shared.counters
    backoff = 0.5
    beat = shared.heartbeat_index("acquisition", cam)
    ring.spec.lock.on_wait = lambda: shared.beat(beat, cfg.stall_timeout_s)  # blocked behind a hung worker: not hung
    try:
        while not shared.stop.is_set():
            shared.beat(beat, cfg.stall_timeout_s + backoff)  # opening a camera may take a while; so may the back-off
            source = make_source(src_cfg)
            try:
                source.open()
            except Exception as exc:
                log.error("camera %s: cannot open (%s); retrying in %.1f s", src_cfg.camera_id, exc, backoff)
                count.add(row, "camera_reconnects")
                shared.stop.wait(backoff)
                backoff = min(2 * backoff, src_cfg.reconnect_max_s)
                continue
            if source.missing_features:
                log.warning("camera %s lacks features: %s", src_cfg.camera_id, ", ".join(source.missing_features))
            backoff = 0.5
            expected = tuple(src_cfg.frame_size) if src_cfg.frame_size is not None else None
            warned_size = False
            try:
                while not shared.stop.is_set():
                    shared.beat(beat, cfg.stall_timeout_s)  # read() returns within fetch_timeout_s, frame or not
                    frame = source.read()
                    if frame is None:
                        count.add(row, "fetch_timeouts")
                        continue
                    with shared.seq[cam].get_lock():
                        shared.seq[cam].value += 1
                        seq = shared.seq[cam].value
                    count.add(row, "frames_grabbed")
                    if shared.paused.is_set():
                        shared.not_inspected(row, cam, seq, frame.frame_id, frame.t_acq_ns, Reason.PAUSED, frame.trigger)
                        continue
                    if frame.image is None:
                        count.add(row, "incomplete_buffers")
                        shared.not_inspected(row, cam, seq, frame.frame_id, frame.t_acq_ns, Reason.BAD_FRAME, frame.trigger)
                        continue
                    if expected is not None and frame.image.shape[1::-1] != expected:
                        count.add(row, "wrong_size")
                        if not warned_size:  # once: every frame of a reconfigured camera would repeat it
                            log.error("camera %s: frame is %dx%d, the station expects %dx%d (frame_size): NOT_INSPECTED "
                                      "bad_frame until the camera's ROI / binning is restored", src_cfg.camera_id,
                                      frame.image.shape[1], frame.image.shape[0], *expected)
                            warned_size = True
                        shared.not_inspected(row, cam, seq, frame.frame_id, frame.t_acq_ns, Reason.BAD_FRAME, frame.trigger)
                        continue
                    if frame.image.nbytes > ring.spec.slot_bytes:
                        log.error("camera %s: %d-byte frame exceeds max_frame_bytes", src_cfg.camera_id, frame.image.nbytes)
                        shared.not_inspected(row, cam, seq, frame.frame_id, frame.t_acq_ns, Reason.FRAME_TOO_LARGE, frame.trigger)
                        continue
                    slot = ring.acquire_free()
                    if slot is None:
                        count.add(row, "ring_full")
                        shared.not_inspected(row, cam, seq, frame.frame_id, frame.t_acq_ns, Reason.RING_FULL, frame.trigger)
                        continue
                    ring.write(slot, frame.image, seq, frame.frame_id, frame.t_acq_ns, frame.trigger)
            except SourceEnded:
                log.info("camera %s: source ended after %d frames", src_cfg.camera_id, shared.seq[cam].value)
                shared.acq_done[cam] = 1
                return
            except Exception as exc:  # camera unplugged, driver error: reconnect
                log.error("camera %s lost (%s); reconnecting", src_cfg.camera_id, exc)
                count.add(row, "camera_reconnects")
                shared.stop.wait(backoff)
                backoff = min(2 * backoff, src_cfg.reconnect_max_s)
            finally:
                source.close()  # releases the camera, also on shutdown
    finally:
        shared.alive_until[beat] = 0  # an ended source (or an error the supervisor sees as an exit) is no hang
        shared.close_sender()
        ring.close()
