"""Waiting for something that happens in another thread or process."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(probe: Callable[[], T], expected: T, within: float = 20) -> float:
    """Seconds until `probe()` returns `expected`; fails after `within` seconds."""
    start = time.monotonic()
    while (found := probe()) != expected:
        assert time.monotonic() - start < within, f"still {found!r}, not {expected!r}"
        time.sleep(0.01)
    return time.monotonic() - start
