"""The validation index: secret digest → what a gateway needs to know, in memory.

ValidateApiKey is a checksum, a SHA-256 and a dict lookup here; it never touches
the database. The index is rebuilt from the event store at start and then
follows it (see ``projections.projector``).
"""

from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from edgekeys.v1.validation_pb2 import (
    VERDICT_ALLOWED,
    VERDICT_DEPLOYMENT_NOT_ALLOWED,
    VERDICT_EXPIRED,
    VERDICT_MALFORMED,
    VERDICT_NOT_FOUND,
    Verdict,
)
from service import keyformat
from service.domain import ApiKey


@dataclass(frozen=True, slots=True)
class Entry:
    digest: bytes
    name: str
    deployments: frozenset[str]
    expire_time: datetime | None


class ValidationIndex:
    def __init__(self) -> None:
        self.position = 0  # the last store position applied
        self._by_digest: dict[bytes, Entry] = {}
        self._digest_by_id: dict[UUID, bytes] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def check(self, secret: str, deployment: str, now: datetime) -> tuple[Verdict, Entry | None]:
        """The verdict for `secret` at `deployment`, and the key's entry when found."""
        if not keyformat.is_well_formed(secret):
            return VERDICT_MALFORMED, None
        digest = keyformat.digest(secret)
        entry = self._by_digest.get(digest)
        # A dict lookup by digest, not a comparison of secrets: a caller cannot steer a
        # SHA-256 toward a stored one, so there is no timing to learn from (DESIGN's
        # hmac.compare_digest after the lookup would only repeat the lookup's equality).
        if entry is None:
            return VERDICT_NOT_FOUND, None
        if entry.expire_time is not None and now >= entry.expire_time:
            return VERDICT_EXPIRED, entry
        if deployment not in entry.deployments:
            return VERDICT_DEPLOYMENT_NOT_ALLOWED, entry
        return VERDICT_ALLOWED, entry

    def apply(self, position: int, event: ApiKey.Event) -> None:
        """Fold one stored event into the index. Entries are replaced, never mutated,
        so a concurrent reader sees either the old entry or the new one."""
        key_id = event.originator_id
        self.position = position
        if key_id not in self._digest_by_id and not isinstance(event, ApiKey.KeyCreated):
            return  # its creation did not decode (altered outside edgekeys): nothing to fold
        match event:
            case ApiKey.KeyCreated():
                digest = bytes.fromhex(event.secret_sha256)
                self._digest_by_id[key_id] = digest
                self._by_digest[digest] = Entry(
                    digest, event.name, frozenset(event.deployments), event.expire_time
                )
            case ApiKey.KeyDeleted():
                del self._by_digest[self._digest_by_id.pop(key_id)]
            case ApiKey.DeploymentAttached():
                entry = self._entry(key_id)
                self._put(replace(entry, deployments=entry.deployments | {event.deployment}))
            case ApiKey.DeploymentDetached():
                entry = self._entry(key_id)
                self._put(replace(entry, deployments=entry.deployments - {event.deployment}))
            case ApiKey.ExpiryChanged():
                self._put(replace(self._entry(key_id), expire_time=event.expire_time))

    def _entry(self, key_id: UUID) -> Entry:
        return self._by_digest[self._digest_by_id[key_id]]

    def _put(self, entry: Entry) -> None:
        self._by_digest[entry.digest] = entry
