"""What ValidateApiKey and Envoy's Check share: the verdict for one presented secret,
with the failure limit per end client, a scoped gateway's view, and the last use."""

from datetime import datetime

from edgekeys.v1 import validation_pb2 as vpb
from projections.index import Entry, ValidationIndex
from service.domain.clock import Clock
from service.domain.names import key_project
from service.replication.freshness import Freshness
from service.security.callers import Caller
from service.security.ratelimit import FailureLimiter


class Validator:
    def __init__(
        self,
        index: ValidationIndex,
        clock: Clock,
        counts: dict[int, int],
        freshness: Freshness | None = None,
        failures: FailureLimiter | None = None,
        uses: dict[str, datetime] | None = None,
    ) -> None:
        self.index = index
        self.clock = clock
        self.freshness = freshness  # an edge follower's: refuse to answer once stale
        self.failures = failures  # failed validations per end client
        self.uses = uses  # key name → last ALLOWED (see service.write.last_use)
        self.counts = counts  # verdict → how many given (edgekeys_validations_total)

    def stale(self) -> Freshness | None:
        """An edge follower's freshness once it has gone stale; else None."""
        freshness = self.freshness
        return freshness if freshness is not None and freshness.stale() else None

    def retry_after(self, client: str) -> float:
        """Seconds until a client now VERDICT_RATE_LIMITED is answered again."""
        return self.failures.wait(client) if self.failures is not None else 0.0

    def verdict(
        self, secret: str, deployment: str, client: str, scope: Caller | None, now: datetime
    ) -> tuple["vpb.Verdict", Entry | None]:
        """The verdict, and the key's entry when the caller may be told of it."""
        verdict, entry = self._judge(secret, deployment, client, scope, now)
        self.counts[verdict] += 1
        return verdict, entry

    def _judge(
        self, secret: str, deployment: str, client: str, scope: Caller | None, now: datetime
    ) -> tuple["vpb.Verdict", Entry | None]:
        """A client over its failure limit is VERDICT_RATE_LIMITED whatever it presents
        (or guessing would still pay off); every other denial spends one of its
        failures. A gateway limited to some projects (`scope`) is told nothing of
        other projects' keys."""
        failures = self.failures
        if client and failures is not None and failures.limited(client):
            return vpb.VERDICT_RATE_LIMITED, None
        verdict, entry = self.index.check(secret, deployment, now)
        if verdict != vpb.VERDICT_ALLOWED and client and failures is not None:
            failures.failed(client)
        if entry is None:
            return verdict, None
        if scope is not None and not scope.may_touch(key_project(entry.name)):
            return vpb.VERDICT_NOT_FOUND, None
        if verdict == vpb.VERDICT_ALLOWED and self.uses is not None:
            self.uses[entry.name] = now
        return verdict, entry
