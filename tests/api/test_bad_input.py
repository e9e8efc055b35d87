"""Bad input never yields INTERNAL or UNKNOWN: every management RPC answers it with
INVALID_ARGUMENT (or the one specific code that fits) and a google.rpc.BadRequest
naming the offending field by its path in the request, and writes nothing.
ValidateApiKey(s) answer any malformed secret with VERDICT_MALFORMED, and only a
malformed deployment name with INVALID_ARGUMENT."""

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from service.domain import keyformat
from tests.conftest import START, FakeClock, RunningServer

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PROJECT = "projects/acme"
LLAMA = f"{PROJECT}/deployments/llama"
MISTRAL = f"{PROJECT}/deployments/mistral"
# Rejected creates aim here: nothing ever lands in it, so its listing stays empty.
UNTOUCHED = "projects/untouched"
PAGED = "projects/paged"
NOW = int(START.timestamp())
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
MIN_TIMESTAMP = -62_135_596_800  # 0001-01-01T00:00:00Z
A_UUID = "6f1c1b1e-4f3a-4d7e-9c1a-2b3c4d5e6f70"


# --- the world the cases run in ----------------------------------------------------


@dataclass(frozen=True)
class Shared:
    """Made once per module: read by the cases, never changed by a passing one."""

    secret: str  # of a key of PROJECT attached to LLAMA
    full_key: pb.ApiKey  # attached to the most deployments a key may have
    page_token: str  # a real next_page_token of ListApiKeys(parent=PAGED, page_size=1)
    purged_key: pb.ApiKey  # a key of PROJECT deleted and purged already


@dataclass(frozen=True)
class World:
    shared: Shared
    key: pb.ApiKey  # a fresh key of PROJECT attached to LLAMA, never expiring

    @property
    def key_id(self) -> str:
        return str(self.key.name.rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    database = tmp_path_factory.mktemp("bad-input") / "edgekeys.db"
    running = RunningServer(database=database, clock=FakeClock()).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def shared(server: RunningServer) -> Shared:
    secret = server.create(deployments=(LLAMA,)).secret
    full_key = server.create(
        deployments=tuple(f"{PROJECT}/deployments/model-{i:03}" for i in range(100))
    ).api_key
    for _ in range(3):
        server.create(parent=PAGED, deployments=())
    first_page = server.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PAGED, page_size=1))
    assert first_page.next_page_token
    purged = server.create(deployments=(LLAMA,)).api_key
    server.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=purged.name))
    purged = server.keys.PurgeApiKey(pb.PurgeApiKeyRequest(name=purged.name)).api_key
    return Shared(
        secret=secret,
        full_key=full_key,
        page_token=first_page.next_page_token,
        purged_key=purged,
    )


@pytest.fixture
def world(server: RunningServer, shared: Shared) -> World:
    return World(shared=shared, key=server.create(deployments=(LLAMA,)).api_key)


# --- the table ---------------------------------------------------------------------

Build = Callable[[World], Message]
Text = Callable[[World], str]


@dataclass(frozen=True)
class Case:
    id: str
    rpc: str  # an ApiKeyService method
    build: Build
    field: str | None  # the BadRequest field violation expected; None: no field to name
    code: grpc.StatusCode = INVALID
    reason: str | None = None  # the ErrorInfo reason, where the table pins it


def resolve(value: str | Text, w: World) -> str:
    return value if isinstance(value, str) else value(w)


def timestamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


BAD_IDS: list[tuple[str, str]] = [
    ("too-short", "abc"),
    ("upper-case", "Abcd"),
    ("trailing-dash", "abcd-"),
    ("leading-dash", "-abcd"),
    ("leading-digit", "1abc"),
    ("64-chars", "a" * 64),
    ("underscore", "ab_cd"),
    ("non-ascii", "äbcd"),
]

BAD_PARENTS: list[tuple[str, str]] = [
    ("empty", ""),
    ("bare-id", "acme"),
    *[(f"project-id-{label}", f"projects/{bad}") for label, bad in BAD_IDS],
    ("trailing-slash", "projects/acme/"),
    ("extra-segments", "projects/acme/apiKeys/abcd"),
    ("wrong-collection", "organizations/acme"),
    ("trailing-newline", "projects/acme\n"),
]

BAD_KEY_NAMES: list[tuple[str, str | Text]] = [
    ("empty", ""),
    *[(f"key-id-{label}", f"{PROJECT}/apiKeys/{bad}") for label, bad in BAD_IDS],
    ("key-id-upper-cased", lambda w: f"{PROJECT}/apiKeys/{w.key_id.upper()}"),
    ("project-id-upper-case", lambda w: f"projects/ACME/apiKeys/{w.key_id}"),
    ("project-id-too-short", lambda w: f"projects/abc/apiKeys/{w.key_id}"),
    ("wrong-collection", lambda w: f"{PROJECT}/deployments/{w.key_id}"),
    ("collection-lower-case", lambda w: f"{PROJECT}/apikeys/{w.key_id}"),
    ("extra-segments", lambda w: f"{w.key.name}/versions/1"),
    ("trailing-slash", lambda w: f"{w.key.name}/"),
    ("leading-slash", lambda w: f"/{w.key.name}"),
    ("no-project", lambda w: f"apiKeys/{w.key_id}"),
    ("bare-id", lambda w: w.key_id),
    ("trailing-newline", lambda w: f"{w.key.name}\n"),
    ("nul-byte", lambda w: f"{w.key.name}\0"),
]


def bad_deployments(project: str) -> list[tuple[str, str]]:
    """Malformed deployment names, and one of another project, as seen from `project`."""
    return [
        ("empty", ""),
        ("bare-id", "llama"),
        *[(f"id-{label}", f"{project}/deployments/{bad}") for label, bad in BAD_IDS],
        ("project-id-upper-case", project.replace("/", "/X", 1) + "/deployments/llama"),
        ("wrong-collection", f"{project}/apiKeys/llama"),
        ("extra-segments", f"{project}/deployments/llama/versions/1"),
        ("trailing-slash", f"{project}/deployments/llama/"),
        ("other-project", "projects/other/deployments/llama"),
    ]


BAD_REQUEST_IDS: list[tuple[str, str]] = [
    ("not-a-uuid", "not-a-uuid"),
    ("number", "12345"),
    ("uuid-one-char-short", A_UUID[:-1]),
    ("uuid-with-junk", A_UUID + "x"),
    # uuid.UUID() takes any Unicode digit through int(): "١" is ARABIC-INDIC DIGIT ONE
    ("other-script-digits", "-".join("١" * n for n in (8, 4, 4, 4, 12))),
]

BAD_ETAGS: list[tuple[str, str]] = [("etag-stale", "999"), ("etag-garbage", "not-an-etag")]

BAD_EXPIRE_TIMES: list[tuple[str, Timestamp]] = [
    ("expire-time-epoch", timestamp(0)),
    ("expire-time-year-1", timestamp(MIN_TIMESTAMP)),
    ("expire-time-a-second-ago", timestamp(NOW - 1)),
    ("expire-time-now", timestamp(NOW)),
    ("expire-time-before-year-1", timestamp(MIN_TIMESTAMP - 1)),
    ("expire-time-after-year-9999", timestamp(MAX_TIMESTAMP + 1)),
    ("expire-time-int64-max", timestamp(2**63 - 1)),
    ("expire-time-nanos-negative", timestamp(NOW + 3600, -1)),
    ("expire-time-nanos-a-second", timestamp(NOW + 3600, 1_000_000_000)),
]

OUT_OF_RANGE = {
    "expire-time-before-year-1",
    "expire-time-after-year-9999",
    "expire-time-int64-max",
    "expire-time-nanos-negative",
    "expire-time-nanos-a-second",
}

# Page tokens are sealed with an unkeyed hash, so any client can mint one; the server
# must still refuse the content of a minted token rather than fail on it.
_PAGED_QUERY = {"parent": PAGED, "deployment": "", "show_deleted": False}


def minted_token(payload: bytes) -> str:
    seal = hashlib.sha256(b"edgekeys page token\0" + payload).digest()[:8]
    return base64.urlsafe_b64encode(payload + seal).decode()


def edited(token: str) -> str:
    """The token with one character in its middle replaced (never a no-op edit)."""
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


BAD_PAGE_TOKENS: list[tuple[str, str | Text]] = [
    ("garbage", "garbage!"),
    ("non-ascii", "jetón"),
    ("nul-byte", "\0"),
    ("base64-of-junk", base64.urlsafe_b64encode(b"junk").decode()),
    ("base64-of-long-junk", base64.urlsafe_b64encode(bytes(range(256))).decode()),
    (
        "base64-of-unsealed-json",
        base64.urlsafe_b64encode(json.dumps({"after": 1}).encode()).decode(),
    ),
    ("real-edited-one-char", lambda w: edited(w.shared.page_token)),
    ("real-truncated", lambda w: w.shared.page_token[:-4]),
    ("real-one-char-dropped", lambda w: w.shared.page_token[:10] + w.shared.page_token[11:]),
    (
        "minted-position-is-a-string",
        minted_token(json.dumps({"after": "1", "query": _PAGED_QUERY}).encode()),
    ),
    (
        "minted-position-beyond-int64",
        minted_token(json.dumps({"after": 10**30, "query": _PAGED_QUERY}).encode()),
    ),
    ("minted-deeply-nested-json", minted_token(b"[" * 100_000 + b"]" * 100_000)),
]


def create_case(
    label: str,
    field: str | None,
    *,
    parent: str = UNTOUCHED,
    api_key_id: str | Text = "",
    request_id: str = "",
    code: grpc.StatusCode = INVALID,
    reason: str | None = None,
    **api_key: Any,
) -> Case:
    def build(w: World) -> Message:
        fields: dict[str, Any] = {"display_name": "bad input", **api_key}
        return pb.CreateApiKeyRequest(
            parent=parent,
            api_key_id=resolve(api_key_id, w),
            api_key=pb.ApiKey(**fields),
            request_id=request_id,
        )

    return Case(f"CreateApiKey-{label}", "CreateApiKey", build, field, code, reason)


def untouched_deployments(*ids: str) -> list[str]:
    return [f"{UNTOUCHED}/deployments/{i}" for i in ids]


CREATE_CASES = [
    create_case("display-name-empty", "api_key.display_name", display_name=""),
    create_case("display-name-blank", "api_key.display_name", display_name="   "),
    create_case("display-name-64-chars", "api_key.display_name", display_name="n" * 64),
    create_case("display-name-64-emoji", "api_key.display_name", display_name="🔑" * 64),
    Case(
        "CreateApiKey-api-key-unset",
        "CreateApiKey",
        lambda w: pb.CreateApiKeyRequest(parent=UNTOUCHED),
        "api_key.display_name",
    ),
    create_case("description-301-chars", "api_key.description", description="d" * 301),
    *[create_case(f"parent-{label}", "parent", parent=bad) for label, bad in BAD_PARENTS],
    *[create_case(f"api-key-id-{label}", "api_key_id", api_key_id=bad) for label, bad in BAD_IDS],
    create_case(
        "api-key-id-taken",
        "api_key_id",
        parent=PROJECT,
        api_key_id=lambda w: w.key_id,
        code=grpc.StatusCode.ALREADY_EXISTS,
        reason="API_KEY_ALREADY_EXISTS",
    ),
    *[
        create_case(f"deployment-{label}", "api_key.deployments[0]", deployments=[bad])
        for label, bad in bad_deployments(UNTOUCHED)
    ],
    create_case(
        "deployment-malformed-at-index-3",
        "api_key.deployments[3]",
        deployments=[*untouched_deployments("m-00", "m-01", "m-02"), "projects/untouched/x"],
    ),
    create_case(
        "deployments-101",
        "api_key.deployments",
        deployments=untouched_deployments(*(f"model-{i:03}" for i in range(101))),
    ),
    create_case(
        "deployments-101-all-the-same",
        "api_key.deployments",
        deployments=untouched_deployments(*["llama"] * 101),
    ),
    create_case(
        "deployments-duplicate",
        "api_key.deployments",
        deployments=untouched_deployments("llama", "mistral", "llama"),
    ),
    *[
        create_case(label, "api_key.expire_time", expire_time=stamp)
        for label, stamp in BAD_EXPIRE_TIMES
    ],
    *[
        create_case(f"request-id-{label}", "request_id", request_id=bad)
        for label, bad in BAD_REQUEST_IDS
    ],
]


def key_name_cases(rpc: str, field: str, request: Callable[[str], Message]) -> list[Case]:
    """`rpc` with each malformed key name in turn; `request` makes the request of a name."""

    def case(label: str, name: str | Text) -> Case:
        return Case(f"{rpc}-name-{label}", rpc, lambda w: request(resolve(name, w)), field)

    return [case(label, name) for label, name in BAD_KEY_NAMES]


def update_case(
    label: str,
    field: str | None,
    *,
    mask: tuple[str, ...] = (),
    request_id: str = "",
    code: grpc.StatusCode = INVALID,
    reason: str | None = None,
    **api_key: Any,
) -> Case:
    def build(w: World) -> Message:
        return pb.UpdateApiKeyRequest(
            api_key=pb.ApiKey(name=w.key.name, **api_key),
            update_mask=FieldMask(paths=list(mask)),
            request_id=request_id,
        )

    return Case(f"UpdateApiKey-{label}", "UpdateApiKey", build, field, code, reason)


UPDATE_CASES = [
    *key_name_cases(
        "UpdateApiKey",
        "api_key.name",
        lambda name: pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=name, display_name="new")),
    ),
    *[
        update_case(f"mask-{path or 'empty-path'}", "update_mask", mask=(path,), display_name="new")
        for path in (
            "name",
            "state",
            "etag",
            "create_time",
            "update_time",
            "delete_time",
            "secret_hint",
            "deployments",
            "bogus",
            "",
            "*",
            "api_key.display_name",
            "display_name.first",
            "DISPLAY_NAME",
        )
    ],
    update_case(
        "mask-valid-and-output-only",
        "update_mask",
        mask=("display_name", "state"),
        display_name="new",
    ),
    update_case("display-name-empty-in-mask", "api_key.display_name", mask=("display_name",)),
    update_case("display-name-blank", "api_key.display_name", display_name="   "),
    update_case("display-name-64-chars", "api_key.display_name", display_name="n" * 64),
    update_case(
        "display-name-64-chars-in-mask",
        "api_key.display_name",
        mask=("display_name",),
        display_name="n" * 64,
    ),
    update_case("description-301-chars", "api_key.description", description="d" * 301),
    update_case(
        "description-301-chars-in-mask",
        "api_key.description",
        mask=("description",),
        description="d" * 301,
    ),
    *[
        update_case(label, "api_key.expire_time", expire_time=stamp)
        for label, stamp in BAD_EXPIRE_TIMES
    ],
    update_case(
        "expire-time-after-year-9999-in-mask",
        "api_key.expire_time",
        mask=("expire_time",),
        expire_time=timestamp(MAX_TIMESTAMP + 1),
    ),
    *[
        update_case(f"request-id-{label}", "request_id", request_id=bad, display_name="new")
        for label, bad in BAD_REQUEST_IDS
    ],
    *[
        update_case(
            label,
            "api_key.etag",
            etag=bad,
            display_name="new",
            code=grpc.StatusCode.ABORTED,
            reason="ETAG_MISMATCH",
        )
        for label, bad in BAD_ETAGS
    ],
]


def deployment_rpc_cases(
    rpc: str, request_type: Callable[..., Message], *, valid: str
) -> list[Case]:
    """The bad inputs AttachDeployment and DetachDeployment share; `valid` is the
    deployment the call would succeed with, had the rest of the request been good."""

    def case(
        label: str,
        field: str | None,
        *,
        deployment: str | Text = valid,
        code: grpc.StatusCode = INVALID,
        reason: str | None = None,
        **options: str,
    ) -> Case:
        def build(w: World) -> Message:
            return request_type(name=w.key.name, deployment=resolve(deployment, w), **options)

        return Case(f"{rpc}-{label}", rpc, build, field, code, reason)

    return [
        *key_name_cases(rpc, "name", lambda name: request_type(name=name, deployment=valid)),
        *[
            case(f"deployment-{label}", "deployment", deployment=bad)
            for label, bad in bad_deployments(PROJECT)
        ],
        *[
            case(f"request-id-{label}", "request_id", request_id=bad)
            for label, bad in BAD_REQUEST_IDS
        ],
        *[
            case(label, "etag", etag=bad, code=grpc.StatusCode.ABORTED, reason="ETAG_MISMATCH")
            for label, bad in BAD_ETAGS
        ],
    ]


ATTACH_CASES = [
    *deployment_rpc_cases("AttachDeployment", pb.AttachDeploymentRequest, valid=MISTRAL),
    Case(
        "AttachDeployment-already-attached",
        "AttachDeployment",
        lambda w: pb.AttachDeploymentRequest(name=w.key.name, deployment=LLAMA),
        "deployment",
        grpc.StatusCode.ALREADY_EXISTS,
        "DEPLOYMENT_ALREADY_ATTACHED",
    ),
    Case(
        "AttachDeployment-101st-deployment",
        "AttachDeployment",
        lambda w: pb.AttachDeploymentRequest(name=w.shared.full_key.name, deployment=LLAMA),
        None,
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOO_MANY_DEPLOYMENTS",
    ),
]

DETACH_CASES = [
    *deployment_rpc_cases("DetachDeployment", pb.DetachDeploymentRequest, valid=LLAMA),
    Case(
        "DetachDeployment-not-attached",
        "DetachDeployment",
        lambda w: pb.DetachDeploymentRequest(name=w.key.name, deployment=MISTRAL),
        "deployment",
        grpc.StatusCode.NOT_FOUND,
        "DEPLOYMENT_NOT_ATTACHED",
    ),
]


def on_the_key(rpc: str, request_type: Any) -> Callable[..., Case]:
    """A case factory for `rpc`: its request names the world's key, plus `options`."""

    def case(
        label: str,
        field: str | None,
        *,
        code: grpc.StatusCode = INVALID,
        reason: str | None = None,
        **options: Any,
    ) -> Case:
        def build(w: World) -> Message:
            return request_type(name=w.key.name, **options)  # type: ignore[no-any-return]

        return Case(f"{rpc}-{label}", rpc, build, field, code, reason)

    return case


def change_cases(rpc: str, request_type: Any) -> list[Case]:
    """What every change of one key refuses: a malformed name, a malformed request id,
    a stale or garbled etag."""
    case = on_the_key(rpc, request_type)
    return [
        *key_name_cases(rpc, "name", lambda name: request_type(name=name)),
        *[
            case(f"request-id-{label}", "request_id", request_id=bad)
            for label, bad in BAD_REQUEST_IDS
        ],
        *[
            case(label, "etag", etag=bad, code=grpc.StatusCode.ABORTED, reason="ETAG_MISMATCH")
            for label, bad in BAD_ETAGS
        ],
    ]


DELETE_CASES = change_cases("DeleteApiKey", pb.DeleteApiKeyRequest)


purge_case = on_the_key("PurgeApiKey", pb.PurgeApiKeyRequest)

PURGE_CASES = [
    *change_cases("PurgeApiKey", pb.PurgeApiKeyRequest),
    # The world's key is live: only a deleted key's personal data may be purged.
    purge_case(
        "key-not-deleted",
        None,
        code=grpc.StatusCode.FAILED_PRECONDITION,
        reason="API_KEY_NOT_DELETED",
    ),
    Case(
        "PurgeApiKey-already-purged",
        "PurgeApiKey",
        lambda w: pb.PurgeApiKeyRequest(name=w.shared.purged_key.name),
        None,
        grpc.StatusCode.FAILED_PRECONDITION,
        "API_KEY_ALREADY_PURGED",
    ),
]

GET_CASES = key_name_cases("GetApiKey", "name", lambda name: pb.GetApiKeyRequest(name=name))


def list_case(
    label: str,
    field: str,
    *,
    parent: str = PAGED,
    page_token: str | Text = "",
    **options: Any,
) -> Case:
    def build(w: World) -> Message:
        return pb.ListApiKeysRequest(parent=parent, page_token=resolve(page_token, w), **options)

    return Case(f"ListApiKeys-{label}", "ListApiKeys", build, field)


LIST_CASES = [
    *[list_case(f"parent-{label}", "parent", parent=bad) for label, bad in BAD_PARENTS],
    list_case("page-size-minus-one", "page_size", page_size=-1),
    list_case("page-size-int32-min", "page_size", page_size=-(2**31)),
    *[
        list_case(f"page-token-{label}", "page_token", page_token=bad)
        for label, bad in BAD_PAGE_TOKENS
    ],
    *[
        list_case(f"deployment-filter-{label}", "deployment", parent=PROJECT, deployment=bad)
        for label, bad in bad_deployments(PROJECT)
        if bad  # an empty filter means "no filter"
    ],
    list_case(
        "page-token-of-another-parent",
        "page_token",
        parent=PROJECT,
        page_token=lambda w: w.shared.page_token,
    ),
    list_case(
        "page-token-with-a-deployment-filter-added",
        "page_token",
        deployment=f"{PAGED}/deployments/llama",
        page_token=lambda w: w.shared.page_token,
    ),
    list_case(
        "page-token-with-show-deleted-flipped",
        "page_token",
        show_deleted=True,
        page_token=lambda w: w.shared.page_token,
    ),
    list_case("order-by-unknown", "order_by", order_by="name"),
    list_case("order-by-descending", "order_by", order_by="expire_time desc"),
    *[
        list_case(f"expire-before-{label}", "expire_before", expire_before=stamp)
        for label, stamp in BAD_EXPIRE_TIMES
        if label in OUT_OF_RANGE  # a past moment is a fine filter
    ],
]


rotate_case = on_the_key("RotateApiKey", pb.RotateApiKeyRequest)

ROTATE_CASES = [
    *change_cases("RotateApiKey", pb.RotateApiKeyRequest),
    rotate_case("grace-negative", "grace_period", grace_period=Duration(seconds=-1)),
    rotate_case("grace-bad-nanos", "grace_period", grace_period=Duration(nanos=-5)),
    rotate_case("grace-over-7-days", "grace_period", grace_period=Duration(seconds=7 * 86400 + 1)),
    rotate_case("grace-huge", "grace_period", grace_period=Duration(seconds=315_576_000_000)),
]


def lookup_case(
    label: str, secret: str, field: str | None, code: grpc.StatusCode = INVALID
) -> Case:
    def build(w: World) -> Message:
        return pb.LookupApiKeyRequest(secret=secret)

    reason = "API_KEY_NOT_FOUND" if code == grpc.StatusCode.NOT_FOUND else None
    return Case(f"LookupApiKey-{label}", "LookupApiKey", build, field, code, reason)


LOOKUP_CASES = [
    lookup_case("empty", "", "secret"),
    lookup_case("not-a-key", "hunter2", "secret"),
    lookup_case("bad-checksum", "edk_" + "0" * 49, "secret"),
    lookup_case("unknown", keyformat.new_secret(), None, grpc.StatusCode.NOT_FOUND),
]

MANAGEMENT_CASES = [
    *ROTATE_CASES,
    *LOOKUP_CASES,
    *CREATE_CASES,
    *GET_CASES,
    *LIST_CASES,
    *UPDATE_CASES,
    *ATTACH_CASES,
    *DETACH_CASES,
    *DELETE_CASES,
    *PURGE_CASES,
]


# --- reading a status --------------------------------------------------------------


def status_details(error: grpc.RpcError) -> tuple[list[Any], list[str]]:
    """The ErrorInfo details and the BadRequest field violations' fields of an error."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status: {error.code()} {error.details()}"
    infos: list[Any] = []
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(v.field for v in bad_request.field_violations)
    return infos, fields


def assert_rejected(
    error: grpc.RpcError,
    code: grpc.StatusCode,
    field: str | None,
    reason: str | None = None,
) -> None:
    assert error.code() == code, f"{error.code()}: {error.details()}"
    infos, fields = status_details(error)
    assert [i.domain for i in infos] == ["edgekeys"]
    if reason is not None:
        assert infos[0].reason == reason
    if field is not None:
        assert field in fields, f"BadRequest names {fields}, not {field!r}"


def events_stored(server: RunningServer) -> int:
    return server.server.store.keys.recorder.max_notification_id() or 0


def keys_of(server: RunningServer, parent: str) -> list[str]:
    request = pb.ListApiKeysRequest(parent=parent, page_size=1000, show_deleted=True)
    return [k.name for k in server.keys.ListApiKeys(request).api_keys]


# --- the tests ---------------------------------------------------------------------


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in MANAGEMENT_CASES])
def test_bad_management_input_is_rejected_naming_the_field_and_writes_nothing(
    server: RunningServer, world: World, case: Case
) -> None:
    request = case.build(world)
    stored_before = events_stored(server)
    untouched_before = keys_of(server, UNTOUCHED)

    with pytest.raises(grpc.RpcError) as raised:
        getattr(server.keys, case.rpc)(request)

    assert_rejected(raised.value, case.code, case.field, case.reason)
    assert events_stored(server) == stored_before
    assert keys_of(server, UNTOUCHED) == untouched_before
    key = server.keys.GetApiKey(pb.GetApiKeyRequest(name=world.key.name)).api_key
    assert key.etag == world.key.etag
    assert key == world.key


def test_the_table_reaches_every_management_rpc() -> None:
    assert {c.rpc for c in MANAGEMENT_CASES} == set(
        pb.DESCRIPTOR.services_by_name["ApiKeyService"].methods_by_name
    )
    assert len({c.id for c in MANAGEMENT_CASES}) == len(MANAGEMENT_CASES)


LIMITS = "projects/limits"


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(
            pb.CreateApiKeyRequest(
                parent=LIMITS,
                api_key_id="k" * 63,
                request_id=A_UUID,
                api_key=pb.ApiKey(
                    display_name="n" * 63,
                    description="d" * 300,
                    deployments=[f"{LIMITS}/deployments/m-{i:02}" for i in range(100)],
                    expire_time=timestamp(MAX_TIMESTAMP, 999_999_999),
                ),
            ),
            id="CreateApiKey-every-field-at-its-limit",
        ),
        pytest.param(
            pb.CreateApiKeyRequest(
                parent=f"projects/{'p' * 63}",
                api_key_id="k-00",
                api_key=pb.ApiKey(display_name="🔑" * 63, expire_time=timestamp(NOW + 1)),
            ),
            id="CreateApiKey-shortest-id-longest-project-soonest-expiry",
        ),
        pytest.param(
            pb.ListApiKeysRequest(parent=LIMITS, page_size=2**31 - 1),
            id="ListApiKeys-page-size-int32-max",
        ),
    ],
)
def test_input_at_the_limits_is_accepted(server: RunningServer, request_: Message) -> None:
    # The other side of the table: its rejections come from the limits, not from a
    # server that refuses everything near them.
    rpc = type(request_).__name__.removesuffix("Request")
    getattr(server.keys, rpc)(request_)


Edit = Callable[[str], str]


def _change_at(index: int) -> Edit:
    return lambda s: s[:index] + ("x" if s[index] != "x" else "y") + s[index + 1 :]


# Malformed secrets, most of them one edit away from a real one (the argument).
MALFORMED_SECRETS: list[tuple[str, Edit]] = [
    ("empty", lambda s: ""),
    ("1-mb", lambda s: "a" * 1_000_000),
    ("1-mb-behind-the-prefix", lambda s: "edk_" + "A" * 1_000_000),
    ("prefix-only", lambda s: "edk_"),
    ("nul", lambda s: "\0"),
    ("nuls-of-the-right-length", lambda s: "\0" * len(s)),
    ("nuls-behind-the-prefix", lambda s: "edk_" + "\0" * 49),
    ("binary-junk", lambda s: bytes(range(256)).decode("latin-1")),
    ("emoji", lambda s: "🔑" * len(s)),
    ("emoji-behind-the-prefix", lambda s: "edk_" + "🔑" * 49),
    ("fullwidth-lookalike-prefix", lambda s: "ｅｄｋ＿" + s[4:]),
    ("accented-body", lambda s: "edk_" + "é" * 43 + s[-6:]),
    ("bad-checksum", lambda s: s[:-1] + ("x" if s[-1] != "x" else "y")),
    ("body-char-changed", _change_at(10)),
    ("scanner-shaped-but-unchecked", lambda s: "edk_" + "A" * 49),
    ("wrong-prefix", lambda s: "edx_" + s[4:]),
    ("prefix-upper-case", lambda s: "EDK_" + s[4:]),
    ("no-prefix", lambda s: s[4:]),
    ("one-char-short", lambda s: s[:-1]),
    ("one-char-long", lambda s: s + "A"),
    ("leading-space", lambda s: " " + s),
    ("trailing-newline", lambda s: s + "\n"),
    ("trailing-nul", lambda s: s + "\0"),
    ("nul-in-the-body", lambda s: s[:20] + "\0" + s[21:]),
    ("bearer-prefixed", lambda s: "Bearer " + s),
]

# Malformed deployment names for ValidateApiKey(s); another project's is well formed.
MALFORMED_DEPLOYMENTS = [
    (label, name) for label, name in bad_deployments(PROJECT) if label != "other-project"
]


def validate(server: RunningServer, secret: str, deployment: str = LLAMA) -> Any:
    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment)
    return server.validation.ValidateApiKey(request)


def test_the_secret_the_near_misses_come_from_is_allowed(
    server: RunningServer, shared: Shared
) -> None:
    assert validate(server, shared.secret).verdict == vpb.VERDICT_ALLOWED


@pytest.mark.parametrize("edit", [pytest.param(e, id=label) for label, e in MALFORMED_SECRETS])
def test_malformed_secret_gets_the_malformed_verdict_not_an_error(
    server: RunningServer, shared: Shared, edit: Edit
) -> None:
    response = validate(server, edit(shared.secret))
    assert response.verdict == vpb.VERDICT_MALFORMED
    assert response.api_key == ""
    assert not response.HasField("expire_time")


def test_malformed_secrets_get_the_malformed_verdict_in_a_batch_too(
    server: RunningServer, shared: Shared
) -> None:
    malformed = [edit(shared.secret) for label, edit in MALFORMED_SECRETS if "1-mb" not in label]
    secrets = [shared.secret, *malformed]
    batch = vpb.ValidateApiKeysRequest(
        requests=[vpb.ValidateApiKeyRequest(secret=s, deployment=LLAMA) for s in secrets]
    )
    verdicts = [r.verdict for r in server.validation.ValidateApiKeys(batch).responses]
    assert verdicts == [vpb.VERDICT_ALLOWED] + [vpb.VERDICT_MALFORMED] * (len(secrets) - 1)


@pytest.mark.parametrize(
    "deployment", [pytest.param(d, id=label) for label, d in MALFORMED_DEPLOYMENTS]
)
def test_malformed_deployment_is_invalid_argument_for_one_key_and_in_a_batch(
    server: RunningServer, shared: Shared, deployment: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        validate(server, shared.secret, deployment)
    assert_rejected(raised.value, INVALID, "deployment")

    batch = vpb.ValidateApiKeysRequest(
        requests=[
            vpb.ValidateApiKeyRequest(secret=shared.secret, deployment=LLAMA),
            vpb.ValidateApiKeyRequest(secret=shared.secret, deployment=deployment),
        ]
    )
    with pytest.raises(grpc.RpcError) as raised:
        server.validation.ValidateApiKeys(batch)
    assert_rejected(raised.value, INVALID, "requests[1].deployment")


def test_a_batch_of_more_than_1000_is_invalid_argument(
    server: RunningServer, shared: Shared
) -> None:
    item = vpb.ValidateApiKeyRequest(secret=shared.secret, deployment=LLAMA)
    with pytest.raises(grpc.RpcError) as raised:
        server.validation.ValidateApiKeys(vpb.ValidateApiKeysRequest(requests=[item] * 1001))
    assert_rejected(raised.value, INVALID, "requests")
