"""Structured, quiet-by-default logging shared by the processes: one logfmt-style line per event."""

from __future__ import annotations

import logging
import os


def setup(component: str, level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("SPIDERPOOL_LOG_LEVEL", "INFO")).upper(),
        format=f"ts=%(asctime)s level=%(levelname)s component={component} logger=%(name)s %(message)s",
    )
    for noisy in ("httpx", "httpx2", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
