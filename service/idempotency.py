"""Request ids (AIP-155): a `request_id` names one request, whatever key it touches.

What names a request (`Request`) and the refusal of an id used by another one; the
records themselves are kept by `service.request_log`.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """What names a request: its id (empty: none), its method, and a fingerprint of
    every other field it carries."""

    id: str = ""
    method: str = ""
    fingerprint: str = ""


NO_REQUEST = Request()


class RequestIdReused(Exception):
    """The request id was used, within a day, by a different request."""

    def __init__(self, request_id: str, method: str, key: str) -> None:
        super().__init__(
            f"request_id {request_id} was used within the last 24 hours by another request "
            f"({method} on {key}): use a new UUID for each request, the same one only to "
            "retry that very request"
        )
