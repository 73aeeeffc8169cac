"""Human progress lines for long lab operations (builds, start-up), printed to stderr."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    print(f"[lab] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(message: str, *, tick_seconds: float = 30.0, detail: Callable[[], str] | None = None) -> Iterator[None]:
    """Announce a step, print a heartbeat while it runs (with ``detail()``, e.g. how far a build
    got), and its duration when it ends."""
    say(f"{message} ...")
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(tick_seconds):
            extra = ""
            if detail is not None:
                try:
                    extra = f" ({detail()})"
                except Exception:  # a progress line must never break the step it reports on
                    extra = ""
            say(f"  ... {message}: {time.monotonic() - started:.0f}s{extra}")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        yield
    except BaseException:
        say(f"{message}: FAILED after {time.monotonic() - started:.1f}s")
        raise
    finally:
        done.set()
        ticker.join()
    say(f"{message}: done in {time.monotonic() - started:.1f}s")
