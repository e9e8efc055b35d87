"""How long an edge follower's index may answer without word from its upstream.

A follower cut off from its upstream cannot learn that a key was revoked; past its
max staleness it refuses to validate (fails closed) rather than let a revoked key
live on at the edge. The check is one clock read: it runs on every request.
"""

import math
import time

from service.storage.database import Unavailable

REASON = "REPLICA_STALE"


class Freshness:
    def __init__(self, upstream: str, max_staleness: float) -> None:
        self.upstream = upstream
        self.max_staleness = max_staleness
        self.last_contact: float | None = None  # time.monotonic() of the last message
        # Past this moment (time.monotonic()) the index is stale. Nothing is fresh
        # before the first snapshot is whole.
        self.deadline = -math.inf

    def heard(self, now: float, whole: bool) -> None:
        """The upstream just spoke; `whole`: the index holds a complete snapshot."""
        self.last_contact = now
        if whole:
            self.deadline = now + self.max_staleness

    def stale(self) -> bool:
        return time.monotonic() > self.deadline

    def explanation(self) -> str:
        if self.last_contact is None or self.deadline == -math.inf:
            return (
                f"this edge replica has not yet received the index from its upstream "
                f"{self.upstream}; failing closed"
            )
        silent = time.monotonic() - self.last_contact
        return (
            f"this edge replica has not heard from its upstream {self.upstream} for "
            f"{silent:.0f} s (max staleness {self.max_staleness:g} s); failing closed"
        )

    def refusal(self) -> Unavailable:
        """What a validation is answered while stale."""
        return Unavailable(REASON, self.explanation())
