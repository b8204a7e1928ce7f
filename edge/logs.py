"""Timestamped logging for the runtime's processes (each spawned child sets it up for itself)."""

import logging

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def setup_child_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(format=FORMAT, datefmt="%Y-%m-%d %H:%M:%S", level=level, force=True)
