"""The rules a command on a key can break. Each is raised by the aggregate (or, for
lookups and races, by the application) and becomes one gRPC status in the API's error
mapper; nothing is recorded when one is raised."""


class DomainError(Exception):
    """A command broke one of the key's rules; nothing was recorded."""


class KeyNotFound(DomainError):
    pass


class KeyAlreadyExists(DomainError):
    pass


class KeyIsDeleted(DomainError):
    """A deleted key cannot change (the event of its deletion is ApiKey.KeyDeleted)."""


class DeploymentAlreadyAttached(DomainError):
    pass


class DeploymentNotAttached(DomainError):
    pass


class DeploymentOfOtherProject(DomainError):
    pass


class TooManyDeployments(DomainError):
    pass


class ExpiryNotInFuture(DomainError):
    pass


class KeyNotDeleted(DomainError):
    pass


class AlreadyPurged(DomainError):
    pass


class GraceOutOfRange(DomainError):
    pass


class StaleEtag(DomainError):
    field: str | None = None  # the request field that held the etag, when not `etag`
