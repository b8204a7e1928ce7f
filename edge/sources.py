"""Frame sources behind one interface: GenICam (harvesters), OpenCV devices, video files, image folders.

A source is opened inside the acquisition process (harvesters objects cannot cross processes).
`read()` returns a Frame, None on a fetch timeout, and raises SourceEnded when a finite source is done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sclvi.edge.config import SourceConfig
from sclvi.edge.pixel_formats import to_array
from sclvi.errors import DataError
from sclvi.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


class SourceEnded(Exception):
    """A finite source (folder, video, max_frames) has delivered everything."""


@dataclass
class Frame:
    image: np.ndarray | None  # (H, W) gray or (H, W, 3) RGB, uint8, owned; None: a buffer we could not read
    frame_id: int
    t_acq_ns: int
    trigger: int | None = None
    name: str = ""


class FrameSource(Protocol):
    missing_features: list[str]

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


class _Paced:
    """Replay at a set rate (or as fast as possible) and stop after max_frames."""

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.count = 0
        self.next_t = time.monotonic()
        self.missing_features: list[str] = []

    def _pace(self) -> None:
        if self.cfg.max_frames is not None and self.count >= self.cfg.max_frames:
            raise SourceEnded
        if self.cfg.rate_hz:
            delay = self.next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.next_t = max(self.next_t + 1.0 / self.cfg.rate_hz, time.monotonic() - 1.0)


class FolderSource(_Paced):
    def open(self) -> None:
        folder = Path(self.cfg.path or "")
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"{folder} holds no images")
        self.index = 0

    def read(self) -> Frame | None:
        from PIL import Image

        self._pace()
        if self.index >= len(self.files):
            if not self.cfg.loop:
                raise SourceEnded
            self.index = 0
        path = self.files[self.index]
        self.index += 1
        self.count += 1
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("L") if im.mode in ("L", "I;16", "I") else im.convert("RGB"))
        except (OSError, ValueError) as exc:  # a corrupt file is one bad part, not a lost camera
            log.warning("unreadable image %s (%s)", path, exc)
            img = None
        return Frame(img, self.count, time.time_ns(), None, path.name)

    def close(self) -> None:
        pass


class OpenCVSource(_Paced):
    """A video file (kind: video) or a capture device (kind: opencv)."""

    def open(self) -> None:
        try:
            import cv2
        except ImportError:
            raise DataError("video and OpenCV sources need opencv: pip install opencv-python-headless") from None
        target = self.cfg.path if self.cfg.kind == "video" else int(self.cfg.device or 0)
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            raise DataError(f"OpenCV cannot open {target!r}")
        self.cv2 = cv2

    def read(self) -> Frame | None:
        self._pace()
        ok, bgr = self.cap.read()
        if not ok:
            if self.cfg.kind == "video" and self.cfg.loop:
                self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self.cap.read()
            if not ok:
                raise SourceEnded
        self.count += 1
        return Frame(np.ascontiguousarray(bgr[:, :, ::-1]), self.count, time.time_ns())

    def close(self) -> None:
        self.cap.release()


class GenICamSource:
    """A GenICam camera through a GenTL producer (.cti) and harvesters."""

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.count = 0
        self.missing_features: list[str] = []
        self.incomplete = 0
        self.h: Any = None
        self.ia: Any = None

    def open(self) -> None:
        from harvesters.core import Harvester

        cti = Path(self.cfg.path or "")
        if not cti.is_file():
            raise DataError(f"GenTL producer {cti} does not exist (the .cti file of your camera's SDK)")
        self.h = Harvester()
        self.h.add_file(str(cti))
        self.h.update()
        if not self.h.device_info_list:
            raise DataError(f"no camera found through {cti}")
        dev = self.cfg.device
        try:
            self.ia = self.h.create(int(dev) if isinstance(dev, int) else ({"serial_number": str(dev)} if dev is not None else 0))
        except (ValueError, IndexError) as exc:
            raise DataError(f"camera {dev!r} not found through {cti}: {exc}") from None
        nm = self.ia.remote_device.node_map
        self.missing_features = []
        for name, value in self.cfg.features.items():
            try:
                getattr(nm, name).value = value
            except Exception as exc:  # a feature this camera lacks or refuses: report it, keep going
                self.missing_features.append(name)
                log.warning("camera %s: feature %s=%r not applied (%s)", self.cfg.camera_id, name, value, exc)
        self.ia.start()

    def read(self) -> Frame | None:
        from genicam.gentl import TimeoutException

        if self.cfg.max_frames is not None and self.count >= self.cfg.max_frames:
            raise SourceEnded
        try:
            buffer = self.ia.fetch(timeout=self.cfg.fetch_timeout_s)
        except TimeoutException:
            return None
        with buffer:
            t = time.time_ns()
            try:
                frame_id = int(buffer.frame_id)
            except Exception:
                frame_id = self.count + 1
            comps = buffer.payload.components if buffer.payload is not None else []
            image = None
            if not comps:
                log.warning("camera %s: buffer %d has no image component", self.cfg.camera_id, frame_id)
            else:
                c = comps[0]
                try:
                    # to_array views the camera's buffer: copy before the buffer goes back to the producer
                    image = np.array(to_array(c.data, c.width, c.height, c.data_format))
                except DataError as exc:
                    log.warning("camera %s: unreadable buffer %d (%s)", self.cfg.camera_id, frame_id, exc)
            if image is None:
                self.incomplete += 1  # still a part on the line: it gets a seq and NOT_INSPECTED (bad_frame)
        self.count += 1
        return Frame(image, frame_id, t, None)

    def close(self) -> None:
        for step in (lambda: self.ia.stop(), lambda: self.ia.destroy(), lambda: self.h.reset()):
            try:
                step()
            except Exception:
                pass
        self.ia = self.h = None


def make_source(cfg: SourceConfig) -> FrameSource:
    if cfg.kind == "genicam":
        return GenICamSource(cfg)
    if cfg.kind == "folder":
        return FolderSource(cfg)
    return OpenCVSource(cfg)
