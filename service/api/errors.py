"""The one place where errors become gRPC statuses.

Every status carries a google.rpc.ErrorInfo (stable reason, domain `edgekeys`);
bad input also carries a google.rpc.BadRequest naming the field.
"""

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from google.rpc.code_pb2 import (
    ABORTED,
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
)
from grpc_status import rpc_status

from service.domain import errors as domain
from service.security.callers import CallerRejected
from service.storage.database import Unavailable
from service.write.idempotency import RequestIdReused

DOMAIN = "edgekeys"


class InvalidArgument(Exception):
    """A request field is malformed or out of its limits."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field


# domain error → (code, ErrorInfo reason, the request field it concerns)
_DOMAIN_ERRORS: dict[type[domain.DomainError], tuple[int, str, str | None]] = {
    domain.KeyNotFound: (NOT_FOUND, "API_KEY_NOT_FOUND", None),
    domain.KeyAlreadyExists: (ALREADY_EXISTS, "API_KEY_ALREADY_EXISTS", "api_key_id"),
    domain.KeyIsDeleted: (FAILED_PRECONDITION, "API_KEY_DELETED", None),
    domain.DeploymentAlreadyAttached: (ALREADY_EXISTS, "DEPLOYMENT_ALREADY_ATTACHED", "deployment"),
    domain.DeploymentNotAttached: (NOT_FOUND, "DEPLOYMENT_NOT_ATTACHED", "deployment"),
    domain.DeploymentOfOtherProject: (
        INVALID_ARGUMENT,
        "DEPLOYMENT_OF_OTHER_PROJECT",
        "deployment",
    ),
    domain.TooManyDeployments: (FAILED_PRECONDITION, "TOO_MANY_DEPLOYMENTS", None),
    domain.ExpiryNotInFuture: (
        INVALID_ARGUMENT,
        "EXPIRE_TIME_NOT_IN_FUTURE",
        "api_key.expire_time",
    ),
    domain.StaleEtag: (ABORTED, "ETAG_MISMATCH", "etag"),
    domain.GraceOutOfRange: (INVALID_ARGUMENT, "INVALID_ARGUMENT", "grace_period"),
    domain.KeyNotDeleted: (FAILED_PRECONDITION, "API_KEY_NOT_DELETED", None),
    domain.AlreadyPurged: (FAILED_PRECONDITION, "API_KEY_ALREADY_PURGED", None),
}


# What a handler may raise on purpose: each becomes its status (anything else, INTERNAL).
EXPECTED = (domain.DomainError, InvalidArgument, Unavailable, CallerRejected, RequestIdReused)


def to_status(
    error: "domain.DomainError | InvalidArgument | Unavailable | CallerRejected | RequestIdReused",
) -> grpc.Status:
    field: str | None
    if isinstance(error, CallerRejected):
        code, reason, field = error.code.value[0], error.reason, None
    elif isinstance(error, InvalidArgument):
        code, reason, field = code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT", error.field
    elif isinstance(error, RequestIdReused):
        code, reason, field = code_pb2.INVALID_ARGUMENT, "REQUEST_ID_REUSED", "request_id"
    elif isinstance(error, Unavailable):
        return unavailable(error.reason, str(error))
    else:
        code, reason, field = _DOMAIN_ERRORS[type(error)]
        field = getattr(error, "field", None) or field
    details: list[Any] = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)]
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=str(error))
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=code, message=str(error), details=[_pack(d) for d in details])
    return rpc_status.to_status(status)


def unavailable(reason: str, message: str) -> grpc.Status:
    """UNAVAILABLE for a reason outside the domain (the store unreachable, a replica
    not ready, or stale)."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[_pack(info)])
    return rpc_status.to_status(status)


def internal() -> grpc.Status:
    """INTERNAL: a fault of ours; the caller learns nothing of it but where to look."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL_ERROR", domain=DOMAIN)
    message = "internal error; see the server log"
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message, details=[_pack(info)])
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
