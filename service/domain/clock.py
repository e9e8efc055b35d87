"""Time, injected: domain code never reads the clock itself, so expiry is testable.
And the one reading of a moment a person wrote."""

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock (tests inject their own)."""
    return datetime.now(UTC)


def written_moment(text: str) -> datetime:
    """A moment as a person writes it (an expiry): a date means 00:00 UTC that day, as
    on the product page; else an ISO 8601 time, UTC unless it says otherwise. Raises
    ValueError for anything else."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
