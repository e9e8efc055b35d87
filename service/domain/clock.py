"""Time, injected: domain code never reads the clock itself, so expiry is testable."""

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock (tests inject their own)."""
    return datetime.now(UTC)
