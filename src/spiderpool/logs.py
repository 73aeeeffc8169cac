"""Structured, quiet-by-default logging shared by the processes: one logfmt-style line per event."""

from __future__ import annotations

import logging
import os


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot even parse (a request line over 8 KiB, bad framing) as an
    error with a traceback. That is the client's mistake, answered 400: one warning line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__.startswith("aiohttp.http_exceptions"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed request refused (400) error=%s", (str(exc).splitlines()[0][:200],)
            record.exc_info = record.exc_text = None
        return True


def setup(component: str, level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("SPIDERPOOL_LOG_LEVEL", "INFO")).upper(),
        format=f"ts=%(asctime)s level=%(levelname)s component={component} logger=%(name)s %(message)s",
    )
    for noisy in ("httpx", "httpx2", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequests())
