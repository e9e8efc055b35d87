"""Limits on failures, per client: a token bucket of failures for each client key.

A client may fail `burst` times in a row; after that one failure per 1/`rate` seconds.
Only failures spend tokens, so a client that never fails is never looked up beyond one
dict miss, and a client that is refused spends nothing: its bucket refills while it waits.
"""

import time
from collections import OrderedDict
from collections.abc import Callable


class FailureLimiter:
    """Token buckets of failures. At most `capacity` clients are tracked: past that, the
    one whose last failure is oldest is forgotten (an attacker rotating addresses gets
    each a fresh bucket anyway, and memory stays bounded)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.capacity = capacity
        # client → (tokens left, when), in the order of last failure. An OrderedDict:
        # dropping a plain dict's first item again and again gets slower each time.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def limited(self, client: str) -> bool:
        """Whether `client` has used up its failures for now."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return False
        tokens, since = bucket
        return tokens + (self.clock() - since) * self.rate < 1

    def wait(self, client: str) -> float:
        """Seconds until `client` may fail again; 0 when it may now."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return 0.0
        tokens, since = bucket
        return max(0.0, (1 - tokens) / self.rate - (self.clock() - since))

    def failed(self, client: str) -> None:
        """Spend one of `client`'s failures."""
        now = self.clock()
        tokens, since = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - since) * self.rate)
        self._buckets[client] = (max(0.0, tokens - 1), now)  # never owes more than it had
        if len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)


def limiter(rate: float, burst: int) -> FailureLimiter | None:
    """None when `rate` is 0: no limit."""
    return FailureLimiter(rate, burst) if rate > 0 else None
