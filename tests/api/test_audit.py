"""AuditService through gRPC, as an auditor uses it: every key's history, the key as it
was at any version or moment, a project's log and its live feed, proof that the stored
history was not altered (and what that proof catches when the SQLite file is changed
behind the server's back), no secret anywhere, and crypto-shredding of personal data."""

import base64
import itertools
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Protocol

import grpc
import pytest
from eventsourcing.persistence import Notification
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from projections import audit_log
from projections.audit_log import link as chain_link
from service.domain import keyformat
from tests.api.test_secrets_at_rest import encodings
from tests.conftest import START, RunningServer

PROJECT = "projects/acme"
OTHER = "projects/other"
LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
PHI = "projects/acme/deployments/phi-3"
HEX64 = re.compile(r"[0-9a-f]{64}")
STREAM_TIMEOUT = 30.0  # seconds; a stream that stalls fails the test instead of hanging it


# --- helpers -------------------------------------------------------------------------


class EventStream(Protocol):
    """A WatchEvents call: an iterator of responses that can be cut."""

    def __iter__(self) -> Iterator[apb.WatchEventsResponse]: ...
    def __next__(self) -> apb.WatchEventsResponse: ...
    def cancel(self) -> bool: ...


def audit(running: RunningServer) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(running.channel)


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def moment_of(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def new_request_id() -> str:
    return str(uuid.uuid4())


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    code: grpc.StatusCode = raised.value.code()
    return code


def create(
    running: RunningServer,
    key_id: str,
    parent: str = PROJECT,
    request_id: str = "",
    **fields: object,
) -> pb.CreateApiKeyResponse:
    fields.setdefault("display_name", key_id)
    fields.setdefault("deployments", [f"{parent}/deployments/llama"])
    response: pb.CreateApiKeyResponse = running.keys.CreateApiKey(
        pb.CreateApiKeyRequest(
            parent=parent,
            api_key_id=key_id,
            api_key=pb.ApiKey(**fields),  # type: ignore[arg-type]
            request_id=request_id,
        )
    )
    return response


def update(
    running: RunningServer, api_key: pb.ApiKey, *paths: str, request_id: str = ""
) -> pb.ApiKey:
    key: pb.ApiKey = running.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(
            api_key=api_key, update_mask=FieldMask(paths=list(paths)), request_id=request_id
        )
    ).api_key
    return key


def attach(running: RunningServer, name: str, deployment: str, request_id: str = "") -> pb.ApiKey:
    key: pb.ApiKey = running.keys.AttachDeployment(
        pb.AttachDeploymentRequest(name=name, deployment=deployment, request_id=request_id)
    ).api_key
    return key


def detach(running: RunningServer, name: str, deployment: str, request_id: str = "") -> pb.ApiKey:
    key: pb.ApiKey = running.keys.DetachDeployment(
        pb.DetachDeploymentRequest(name=name, deployment=deployment, request_id=request_id)
    ).api_key
    return key


def delete(running: RunningServer, name: str, request_id: str = "") -> pb.ApiKey:
    key: pb.ApiKey = running.keys.DeleteApiKey(
        pb.DeleteApiKeyRequest(name=name, request_id=request_id)
    ).api_key
    return key


def purge(running: RunningServer, name: str) -> pb.ApiKey:
    key: pb.ApiKey = running.keys.PurgeApiKey(pb.PurgeApiKeyRequest(name=name)).api_key
    return key


def get(running: RunningServer, name: str) -> pb.ApiKey:
    key: pb.ApiKey = running.keys.GetApiKey(pb.GetApiKeyRequest(name=name)).api_key
    return key


def key_history(running: RunningServer, name: str, page_size: int = 0) -> list[apb.AuditEvent]:
    """Every event of one key, following page tokens to the end."""
    events: list[apb.AuditEvent] = []
    token = ""
    for _ in range(10_000):
        page = audit(running).ListApiKeyEvents(
            apb.ListApiKeyEventsRequest(name=name, page_size=page_size, page_token=token)
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events
    raise AssertionError("ListApiKeyEvents never reached its last page")


def project_log(
    running: RunningServer,
    parent: str = PROJECT,
    *,
    after: int = 0,
    page_size: int = 0,
    event_types: Sequence[str] = (),
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> list[apb.AuditEvent]:
    """A project's log via ListEvents, every page reached two ways: by its opaque
    page_token, and by after_position set to the last event's position."""
    events: list[apb.AuditEvent] = []
    for _ in range(10_000):
        request = apb.ListEventsRequest(
            parent=parent, after_position=after, page_size=page_size, event_types=event_types
        )
        if start_time is not None:
            request.start_time.CopyFrom(stamp(start_time))
        if end_time is not None:
            request.end_time.CopyFrom(stamp(end_time))
        page = audit(running).ListEvents(request)
        events.extend(page.events)
        if not page.next_page_token:
            return events
        assert page.next_page_token != str(page.events[-1].position)  # opaque
        by_token = apb.ListEventsRequest()
        by_token.CopyFrom(request)
        by_token.page_token = page.next_page_token
        after = page.events[-1].position
        request.after_position = after
        by_position = audit(running).ListEvents(request)
        assert audit(running).ListEvents(by_token).events == by_position.events
    raise AssertionError("ListEvents never reached its last page")


def whole_log(running: RunningServer) -> list[apb.AuditEvent]:
    """Every event in the store (the tests use two projects), in store order."""
    events = project_log(running, PROJECT) + project_log(running, OTHER)
    return sorted(events, key=lambda event: event.position)


def revision(
    running: RunningServer, name: str, version: int | None = None, as_of: datetime | None = None
) -> pb.ApiKey:
    request = apb.GetApiKeyRevisionRequest(name=name)
    if version is not None:
        request.version = version
    if as_of is not None:
        request.as_of_time.CopyFrom(stamp(as_of))
    key: pb.ApiKey = audit(running).GetApiKeyRevision(request).api_key
    return key


def verify(
    running: RunningServer, parent: str = "", checkpoint: apb.Checkpoint | None = None
) -> apb.VerifyAuditLogResponse:
    response: apb.VerifyAuditLogResponse = audit(running).VerifyAuditLog(
        apb.VerifyAuditLogRequest(parent=parent, checkpoint=checkpoint)
    )
    return response


def watch(running: RunningServer, after: int, parent: str = PROJECT) -> EventStream:
    stream: EventStream = audit(running).WatchEvents(
        apb.WatchEventsRequest(parent=parent, after_position=after), timeout=STREAM_TIMEOUT
    )
    return stream


def stored_event_count(running: RunningServer) -> int:
    with closing(sqlite3.connect(running.database)) as db:
        count: int = db.execute("SELECT count(*) FROM stored_events").fetchone()[0]
    return count


def tamper(running: RunningServer, change: Callable[[sqlite3.Connection], None]) -> None:
    """Alter the SQLite file as someone with access to it would: outside edgekeys, with
    the server stopped (it holds connections and caches), then start it again."""
    running.stop()
    with closing(sqlite3.connect(running.database)) as db:
        change(db)
        db.commit()
    running.start()


def stored_state(db: sqlite3.Connection, position: int) -> bytes:
    state: bytes = db.execute(
        "SELECT state FROM stored_events WHERE rowid = ?", (position,)
    ).fetchone()[0]
    return state


def only(events: Sequence[apb.AuditEvent], event_type: str, api_key: str) -> apb.AuditEvent:
    [found] = [e for e in events if e.event_type == event_type and e.api_key == api_key]
    return found


# --- ListApiKeyEvents ----------------------------------------------------------------


def test_key_history_lists_every_event_oldest_first_with_who_when_and_what(
    running: RunningServer,
) -> None:
    clock = running.clock
    ids = [new_request_id() for _ in range(6)]
    expiry = START + timedelta(days=365)
    created = create(
        running,
        "hist-key",
        request_id=ids[0],
        display_name="Portal",
        description="for the portal",
        deployments=[LLAMA],
        expire_time=stamp(expiry),
    )
    name = created.api_key.name
    create(running, "bystander", display_name="someone else's key")
    create(running, "elsewhere", parent=OTHER)
    times = [clock.now]
    clock.advance(minutes=1)
    times.append(clock.now)
    update(
        running, pb.ApiKey(name=name, display_name="Portal v2"), "display_name", request_id=ids[1]
    )
    clock.advance(minutes=1)
    times.append(clock.now)
    attach(running, name, MISTRAL, request_id=ids[2])
    clock.advance(minutes=1)
    times.append(clock.now)
    detach(running, name, LLAMA)  # no request id
    clock.advance(minutes=1)
    times.append(clock.now)
    update(running, pb.ApiKey(name=name), "expire_time", request_id=ids[3])  # never expires
    clock.advance(minutes=1)
    # One request touching details and expiry: two events, one moment, one request id.
    later = START + timedelta(days=30)
    update(
        running,
        pb.ApiKey(name=name, description="renewed", expire_time=stamp(later)),
        "description",
        "expire_time",
        request_id=ids[4],
    )
    times += [clock.now, clock.now]
    clock.advance(minutes=1)
    times.append(clock.now)
    delete(running, name, request_id=ids[5])
    update(
        running,
        pb.ApiKey(name=f"{PROJECT}/apiKeys/bystander", description="changed meanwhile"),
        "description",
    )

    events = key_history(running, name)

    assert [(e.version, e.event_type) for e in events] == [
        (1, "KeyCreated"),
        (2, "DetailsChanged"),
        (3, "DeploymentAttached"),
        (4, "DeploymentDetached"),
        (5, "ExpiryChanged"),
        (6, "DetailsChanged"),
        (7, "ExpiryChanged"),
        (8, "KeyDeleted"),
    ]
    assert [moment_of(e.occur_time) for e in events] == times
    assert [e.request_id for e in events] == [
        ids[0],
        ids[1],
        ids[2],
        "",
        ids[3],
        ids[4],
        ids[4],
        ids[5],
    ]
    assert {e.actor for e in events} == {"anonymous"}
    assert {e.api_key for e in events} == {name}
    assert not any(e.personal_data_erased for e in events)
    assert [e.WhichOneof("values") for e in events] == [
        "key_created",
        "details_changed",
        "deployment_attached",
        "deployment_detached",
        "expiry_changed",
        "details_changed",
        "expiry_changed",
        "key_deleted",
    ]
    assert events[0].key_created == apb.KeyCreatedValues(
        display_name="Portal",
        description="for the portal",
        deployments=[LLAMA],
        expire_time=stamp(expiry),
        secret_hint=created.api_key.secret_hint,
    )
    # What was left out of a DetailsChanged was not changed: the field is absent.
    assert events[1].details_changed == apb.DetailsChangedValues(display_name="Portal v2")
    assert not events[1].details_changed.HasField("description")
    assert events[2].deployment_attached == apb.DeploymentValues(deployment=MISTRAL)
    assert events[3].deployment_detached == apb.DeploymentValues(deployment=LLAMA)
    assert not events[4].expiry_changed.HasField("expire_time")  # never expires
    assert events[5].details_changed == apb.DetailsChangedValues(description="renewed")
    assert not events[5].details_changed.HasField("display_name")
    assert events[6].expiry_changed == apb.ExpiryChangedValues(expire_time=stamp(later))
    # Global store positions: increasing, with the other keys' events in between.
    positions = [e.position for e in events]
    assert positions == sorted(set(positions))
    assert positions[0] == 1 and positions[1] == 4  # the bystander and the other project's key
    assert all(HEX64.fullmatch(e.hash) for e in events)
    assert len({e.hash for e in events}) == len(events)
    # The same events, to the byte, as the project's log shows them.
    by_position = {e.position: e for e in project_log(running)}
    assert events == [by_position[p] for p in positions]


def test_key_history_pages_visit_every_event_exactly_once(running: RunningServer) -> None:
    name = create(running, "paged-key").api_key.name
    for index in range(6):
        update(running, pb.ApiKey(name=name, description=f"edit {index}"), "description")
        create(running, f"noise-{index}")  # other keys' events between this key's
    delete(running, name)
    everything = key_history(running, name)
    assert [e.version for e in everything] == list(range(1, 9))
    for page_size in (1, 2, 3, 7, 8, 9, 1000):
        assert key_history(running, name, page_size) == everything, page_size
    first = audit(running).ListApiKeyEvents(apb.ListApiKeyEventsRequest(name=name, page_size=3))
    assert len(first.events) == 3 and first.next_page_token
    last = audit(running).ListApiKeyEvents(apb.ListApiKeyEventsRequest(name=name, page_size=8))
    assert len(last.events) == 8 and last.next_page_token == ""


def test_history_of_an_unknown_key_is_not_found(running: RunningServer) -> None:
    create(running, "known-key")
    for name in (f"{PROJECT}/apiKeys/no-such-key", f"{OTHER}/apiKeys/known-key"):
        assert (
            code_of(lambda n=name: key_history(running, n))  # type: ignore[misc]
            == grpc.StatusCode.NOT_FOUND
        )


# --- GetApiKeyRevision ---------------------------------------------------------------


def test_every_revision_is_replayed_by_version_and_by_time(running: RunningServer) -> None:
    clock = running.clock
    first = create(running, "rev-key", display_name="Rev", description="first words")
    name = first.api_key.name
    states = [first.api_key]
    times = [clock.now]
    changes: list[Callable[[], pb.ApiKey]] = [
        lambda: update(running, pb.ApiKey(name=name, display_name="Rev 2"), "display_name"),
        lambda: attach(running, name, MISTRAL),
        lambda: update(
            running,
            pb.ApiKey(name=name, expire_time=stamp(START + timedelta(days=9))),
            "expire_time",
        ),
        lambda: detach(running, name, LLAMA),
        lambda: update(running, pb.ApiKey(name=name, description="last words"), "description"),
    ]
    for change in changes:
        clock.advance(minutes=10)
        create(running, f"noise-{len(times)}")  # another key's change in between
        clock.advance(minutes=10)
        states.append(change())
        times.append(clock.now)
    assert [int(s.etag) for s in states] == [1, 2, 3, 4, 5, 6]
    clock.advance(days=1)
    assert get(running, name) == states[-1]

    for version, state in enumerate(states, start=1):
        assert revision(running, name, version=version) == state, version
    for at, state in zip(times, states, strict=True):
        assert revision(running, name, as_of=at) == state  # exactly at the change
        assert revision(running, name, as_of=at + timedelta(minutes=5)) == state  # between
    assert revision(running, name, as_of=clock.now + timedelta(days=999)) == states[-1]
    for at, earlier in zip(times[1:], states, strict=False):
        assert revision(running, name, as_of=at - timedelta(microseconds=1)) == earlier
    # Spot checks of what the revisions say, beyond "equal to what the change returned".
    assert revision(running, name, version=1).display_name == "Rev"
    assert list(revision(running, name, version=3).deployments) == [LLAMA, MISTRAL]
    assert list(revision(running, name, version=5).deployments) == [MISTRAL]
    assert revision(running, name, version=6).description == "last words"


def test_revision_before_creation_is_not_found(running: RunningServer) -> None:
    running.clock.advance(hours=1)
    created_at = running.clock.now
    name = create(running, "young-key").api_key.name
    before = created_at - timedelta(microseconds=1)
    assert code_of(lambda: revision(running, name, as_of=before)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: revision(running, name, as_of=START)) == grpc.StatusCode.NOT_FOUND
    assert revision(running, name, as_of=created_at).etag == "1"


def test_revision_version_zero_is_invalid_and_beyond_the_last_is_not_found(
    running: RunningServer,
) -> None:
    name = create(running, "short-key").api_key.name
    update(running, pb.ApiKey(name=name, description="v2"), "description")
    for version in (0, -1):
        assert (
            code_of(lambda v=version: revision(running, name, version=v))  # type: ignore[misc]
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    for version in (3, 4, 2**62):
        assert (
            code_of(lambda v=version: revision(running, name, version=v))  # type: ignore[misc]
            == grpc.StatusCode.NOT_FOUND
        )
    assert revision(running, name, version=2).description == "v2"
    unknown = f"{PROJECT}/apiKeys/never-made"
    assert code_of(lambda: revision(running, unknown, version=1)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: revision(running, unknown, as_of=START)) == grpc.StatusCode.NOT_FOUND
    neither = apb.GetApiKeyRevisionRequest(name=name)
    assert (
        code_of(lambda: audit(running).GetApiKeyRevision(neither))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_revisions_of_a_key_with_snapshots_are_replayed_exactly(running: RunningServer) -> None:
    clock = running.clock
    name = create(running, "long-key", description="revision 1").api_key.name
    for version in range(2, 131):
        clock.advance(seconds=1)
        update(running, pb.ApiKey(name=name, description=f"revision {version}"), "description")
    with closing(sqlite3.connect(running.database)) as db:
        snapshot_versions = {
            v for (v,) in db.execute("SELECT originator_version FROM stored_snapshots")
        }
    assert 100 in snapshot_versions  # the replay below really starts from a snapshot

    for version in (1, 2, 50, 99, 100, 101, 102, 129, 130):
        key = revision(running, name, version=version)
        assert (key.description, key.etag) == (f"revision {version}", str(version))
        at = START + timedelta(seconds=version - 1)
        assert moment_of(key.update_time) == at
        assert revision(running, name, as_of=at) == key
        assert revision(running, name, as_of=at + timedelta(milliseconds=500)) == key
    assert code_of(lambda: revision(running, name, version=131)) == grpc.StatusCode.NOT_FOUND
    assert get(running, name).description == "revision 130"


# --- ListEvents ----------------------------------------------------------------------


def test_project_log_is_in_commit_order_and_never_shows_another_project(
    running: RunningServer,
) -> None:
    ours, theirs = [], []
    for index in range(3):
        ours.append(create(running, f"ours-{index}").api_key.name)
        theirs.append(create(running, f"theirs-{index}", parent=OTHER).api_key.name)
        update(running, pb.ApiKey(name=ours[-1], description="ours"), "description")
        attach(running, theirs[-1], "projects/other/deployments/phi-3")
    acme = project_log(running, PROJECT)
    other = project_log(running, OTHER)

    assert [(e.api_key, e.event_type) for e in acme] == [
        (name, kind) for name in ours for kind in ("KeyCreated", "DetailsChanged")
    ]
    assert [(e.api_key, e.event_type) for e in other] == [
        (name, kind) for name in theirs for kind in ("KeyCreated", "DeploymentAttached")
    ]
    for log in (acme, other):
        positions = [e.position for e in log]
        assert all(a < b for a, b in itertools.pairwise(positions))
    # Positions are the store's: global, from 1, every event in exactly one project.
    assert sorted(e.position for e in acme + other) == list(range(1, 13))
    assert stored_event_count(running) == 12
    assert project_log(running, "projects/nobody") == []


def test_project_log_filters_by_event_type_and_time_window(running: RunningServer) -> None:
    clock = running.clock
    t0 = clock.now
    name = create(running, "filtered").api_key.name
    create(running, "theirs", parent=OTHER)
    clock.advance(minutes=1)
    t1 = clock.now
    attach(running, name, MISTRAL)
    create(running, "theirs-too", parent=OTHER)
    clock.advance(minutes=1)
    t2 = clock.now
    update(running, pb.ApiKey(name=name, display_name="Filtered"), "display_name")
    clock.advance(minutes=1)
    t3 = clock.now
    delete(running, name)
    create(running, "theirs-three", parent=OTHER)

    def kinds(**filters: object) -> list[str]:
        found = project_log(running, **filters)  # type: ignore[arg-type]
        assert all(e.api_key == name for e in found)
        paged = project_log(running, page_size=1, **filters)  # type: ignore[arg-type]
        assert paged == found
        return [e.event_type for e in found]

    everything = ["KeyCreated", "DeploymentAttached", "DetailsChanged", "KeyDeleted"]
    assert kinds() == everything
    assert kinds(event_types=["KeyDeleted", "DeploymentAttached"]) == [
        "DeploymentAttached",
        "KeyDeleted",
    ]
    assert kinds(event_types=["ExpiryChanged"]) == []
    assert kinds(start_time=t1) == everything[1:]  # start: inclusive
    assert kinds(end_time=t2) == everything[:2]  # end: exclusive
    assert kinds(start_time=t0, end_time=t3 + timedelta(microseconds=1)) == everything
    assert kinds(start_time=t1 + timedelta(microseconds=1)) == everything[2:]
    assert kinds(start_time=t1, end_time=t3, event_types=["DetailsChanged", "KeyDeleted"]) == [
        "DetailsChanged"
    ]
    assert kinds(start_time=t3 + timedelta(seconds=1)) == []
    assert [moment_of(e.occur_time) for e in project_log(running)] == [t0, t1, t2, t3]


def test_unknown_event_type_is_invalid_argument(running: RunningServer) -> None:
    create(running, "typed-key")
    for types in (["KeyExploded"], ["KeyCreated", "KeyExploded"], ["keycreated"], [""]):
        assert (
            code_of(lambda t=types: project_log(running, event_types=t))  # type: ignore[misc]
            == grpc.StatusCode.INVALID_ARGUMENT
        ), types
    every_type = [
        "KeyCreated",
        "DetailsChanged",
        "DeploymentAttached",
        "DeploymentDetached",
        "ExpiryChanged",
        "KeyDeleted",
        "PersonalDataPurged",
    ]
    assert [e.event_type for e in project_log(running, event_types=every_type)] == ["KeyCreated"]


def test_paging_by_after_position_visits_every_event_exactly_once(
    running: RunningServer,
) -> None:
    names = [create(running, f"page-{index}").api_key.name for index in range(4)]
    for index, name in enumerate(names):
        create(running, f"theirs-{index}", parent=OTHER)
        update(running, pb.ApiKey(name=name, description="paged"), "description")
    delete(running, names[0])
    everything = project_log(running)
    assert len(everything) == 9
    for page_size in (1, 2, 3, 4, 8, 9, 10):
        assert project_log(running, page_size=page_size) == everything, page_size
    for index, event in enumerate(everything):
        assert project_log(running, after=event.position) == everything[index + 1 :]
    # after_position need not be one of the project's own positions.
    theirs = project_log(running, OTHER)
    middle = theirs[1].position
    assert project_log(running, after=middle) == [e for e in everything if e.position > middle]
    last = audit(running).ListEvents(apb.ListEventsRequest(parent=PROJECT, page_size=9))
    assert len(last.events) == 9 and last.next_page_token == ""


# --- WatchEvents ---------------------------------------------------------------------


def test_watch_catches_up_then_follows_live(running: RunningServer) -> None:
    first = create(running, "watched-1").api_key.name
    create(running, "unwatched", parent=OTHER)
    update(running, pb.ApiKey(name=first, description="before the watch"), "description")
    stream = watch(running, after=0)
    try:
        caught_up = [next(stream).event for _ in range(2)]
        assert caught_up == project_log(running)
        running.clock.advance(minutes=1)
        create(running, "unwatched-2", parent=OTHER)  # never arrives here
        second = create(running, "watched-2").api_key.name
        live = next(stream).event
        assert (live.api_key, live.event_type) == (second, "KeyCreated")
        assert moment_of(live.occur_time) == running.clock.now
        delete(running, first)
        assert (next(stream).event.api_key, "KeyDeleted") == (first, "KeyDeleted")
    finally:
        stream.cancel()
    log = project_log(running)
    assert [e.event_type for e in log] == [
        "KeyCreated",
        "DetailsChanged",
        "KeyCreated",
        "KeyDeleted",
    ]
    # Starting after a position skips what came before it.
    resumed = watch(running, after=log[1].position)
    try:
        assert [next(resumed).event for _ in range(2)] == log[2:]
    finally:
        resumed.cancel()


def test_watch_resumed_after_cuts_delivers_every_event_once_and_in_order(
    running: RunningServer,
) -> None:
    create(running, "before-watch")
    last_key = f"{PROJECT}/apiKeys/last-one"
    failures: list[Exception] = []
    writing = threading.Event()

    def write() -> None:
        try:
            writing.set()
            for index in range(40):
                name = create(running, f"written-{index}").api_key.name
                update(running, pb.ApiKey(name=name, description=f"d{index}"), "description")
                create(running, f"theirs-{index}", parent=OTHER)
            create(running, "last-one")  # the writer's last event: the reader stops there
        except Exception as error:
            failures.append(error)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert writing.wait(STREAM_TIMEOUT)
    seen: list[apb.AuditEvent] = []
    cut_while_writing: list[bool] = []
    try:
        for cut_at in (3, 10, 30, 31, None):  # cut the stream after this many events
            stream = watch(running, after=seen[-1].position if seen else 0)
            try:
                for response in stream:
                    seen.append(response.event)
                    if response.event.api_key == last_key or len(seen) == cut_at:
                        break
            finally:
                stream.cancel()
                cut_while_writing.append(writer.is_alive())
            if seen[-1].api_key == last_key:
                break
    finally:
        writer.join(60)
    assert not failures, failures
    assert any(cut_while_writing)  # the cuts fell amid concurrent writes, as meant
    assert seen[-1].api_key == last_key
    expected = project_log(running)
    assert len(expected) == 1 + 40 * 2 + 1
    assert [e.position for e in seen] == [e.position for e in expected]
    assert seen == expected
    assert all(e.api_key.startswith(f"{PROJECT}/") for e in seen)


# --- VerifyAuditLog ------------------------------------------------------------------


def make_history(running: RunningServer) -> list[apb.AuditEvent]:
    """Three keys in two projects, several changes each, interleaved; the whole log."""
    clock = running.clock
    a = create(running, "key-a").api_key.name
    b = create(running, "key-b").api_key.name
    x = create(running, "key-x", parent=OTHER).api_key.name
    clock.advance(minutes=1)
    attach(running, a, MISTRAL)
    update(running, pb.ApiKey(name=b, description="b changed"), "description")
    update(running, pb.ApiKey(name=x, description="x changed"), "description")
    clock.advance(minutes=1)
    update(running, pb.ApiKey(name=a, description="a changed"), "description")
    attach(running, x, "projects/other/deployments/phi-3")
    delete(running, b)
    clock.advance(minutes=1)
    attach(running, a, PHI)
    return whole_log(running)


def test_untouched_store_verifies_with_a_checkpoint_at_the_last_event(
    running: RunningServer,
) -> None:
    log = make_history(running)
    result = verify(running)
    assert result.ok, result.problem
    assert (result.first_bad_position, result.problem) == (0, "")
    assert result.events_checked == len(log) == stored_event_count(running) == 10
    assert result.checkpoint.position == log[-1].position == 10
    assert HEX64.fullmatch(result.checkpoint.digest)
    assert result.checkpoint.digest == log[-1].hash  # the head is the last event's link
    # Later, with more history: still passes through the checkpoint kept before.
    create(running, "later-key")
    again = verify(running, checkpoint=result.checkpoint)
    assert again.ok and again.events_checked == 11
    assert again.checkpoint.position == 11 and again.checkpoint.digest != result.checkpoint.digest
    forged = apb.Checkpoint(position=result.checkpoint.position, digest="0" * 64)
    refused = verify(running, checkpoint=forged)
    assert (refused.ok, refused.first_bad_position) == (False, result.checkpoint.position)


def test_project_scoped_verification_counts_only_that_project(running: RunningServer) -> None:
    log = make_history(running)
    acme = verify(running, PROJECT)
    other = verify(running, OTHER)
    assert acme.ok and other.ok
    assert acme.events_checked == len(project_log(running, PROJECT)) == 7
    assert other.events_checked == len(project_log(running, OTHER)) == 3
    assert verify(running, "projects/nobody").events_checked == 0
    assert verify(running).events_checked == len(log)


def test_one_edited_byte_is_found_at_its_position(running: RunningServer) -> None:
    log = make_history(running)
    before = verify(running).checkpoint
    [edited] = [e for e in log if e.deployment_attached.deployment == MISTRAL]

    def edit(db: sqlite3.Connection) -> None:
        state = stored_state(db, edited.position)
        at = state.index(b"mistral")
        changed = state[:at] + b"n" + state[at + 1 :]  # still well-formed: "nistral"
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (changed, edited.position))

    tamper(running, edit)
    result = verify(running)
    assert (result.ok, result.first_bad_position) == (False, edited.position)
    assert str(edited.position) in result.problem
    assert verify(running, checkpoint=before).first_bad_position == edited.position
    assert verify(running, PROJECT).first_bad_position == edited.position
    assert verify(running, OTHER).ok  # that project's own links still hold


def test_a_deleted_event_row_is_found_at_its_position(running: RunningServer) -> None:
    log = make_history(running)
    removed = only(log, "DetailsChanged", f"{PROJECT}/apiKeys/key-b")

    def remove(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM stored_events WHERE rowid = ?", (removed.position,))

    tamper(running, remove)
    result = verify(running)
    assert (result.ok, result.first_bad_position) == (False, removed.position)
    assert str(removed.position) in result.problem
    assert verify(running, PROJECT).first_bad_position == removed.position
    assert verify(running, OTHER).ok


def test_two_swapped_event_rows_are_found_at_the_lower_position(running: RunningServer) -> None:
    log = make_history(running)
    lower = only(log, "DetailsChanged", f"{PROJECT}/apiKeys/key-b")
    higher = only(log, "DeploymentAttached", f"{OTHER}/apiKeys/key-x")
    assert lower.position < higher.position

    def swap(db: sqlite3.Connection) -> None:
        columns = "originator_id, originator_version, topic, state"
        query = f"SELECT {columns} FROM stored_events WHERE rowid = ?"
        row_p = db.execute(query, (lower.position,)).fetchone()
        row_q = db.execute(query, (higher.position,)).fetchone()
        change = (
            "UPDATE stored_events SET originator_id = ?, originator_version = ?, topic = ?, "
            "state = ? WHERE rowid = ?"
        )
        # Through a placeholder: (originator_id, originator_version) is unique.
        db.execute(change, ("placeholder", -1, "", b"", lower.position))
        db.execute(change, (*row_p, higher.position))
        db.execute(change, (*row_q, lower.position))

    tamper(running, swap)
    result = verify(running)
    assert (result.ok, result.first_bad_position) == (False, lower.position)
    assert verify(running, PROJECT).first_bad_position == lower.position
    assert verify(running, OTHER).first_bad_position == higher.position


def test_cut_off_history_is_found_by_the_stored_checkpoint_or_an_auditors(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    log = make_history(running)
    early = verify(running).checkpoint
    create(running, "newest-1")
    create(running, "newest-2", parent=OTHER)
    late = verify(running).checkpoint  # stored by the server too
    assert late.position == early.position + 2 == len(log) + 2

    def cut(db: sqlite3.Connection) -> None:
        for table, column in (("stored_events", "rowid"), ("audit_log", "position")):
            db.execute(f"DELETE FROM {table} WHERE {column} > ?", (early.position,))

    caplog.set_level(logging.INFO)
    tamper(running, cut)
    logged = wait_for_log(caplog, "audit log verification failed")  # at start
    assert f"position {early.position + 1}: history ends before stored checkpoint" in logged
    alone = verify(running)  # the server's own checkpoint is past the end...
    assert (alone.ok, alone.first_bad_position) == (False, early.position + 1)
    assert "history ends before stored checkpoint" in alone.problem

    def cut_checkpoints_too(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM audit_checkpoints WHERE position > ?", (early.position,))

    tamper(running, cut_checkpoints_too)
    # ...and a chain beside the data, checkpoints included, cannot see its own end
    # cut off once they are cut as well...
    alone = verify(running)
    assert alone.ok, alone.problem
    assert alone.events_checked == len(log)
    assert alone.checkpoint == early
    against = verify(running, checkpoint=late)  # ...the checkpoint kept elsewhere does
    assert (against.ok, against.first_bad_position) == (False, early.position + 1)
    assert verify(running, checkpoint=early).ok


@pytest.mark.parametrize(
    ("alteration", "event_type"),
    [("garbled", "DetailsChanged"), ("garbled", "KeyCreated"), ("deleted", "KeyCreated")],
)
def test_a_store_altered_outside_edgekeys_still_serves_and_logs_the_first_bad_position(
    running: RunningServer, caplog: pytest.LogCaptureFixture, alteration: str, event_type: str
) -> None:
    """Altering a key's creation, which its later events build on, included."""
    victim = create(running, "victim-key").api_key.name
    attach(running, victim, MISTRAL)  # later events of the altered key
    update(running, pb.ApiKey(name=victim, description="after"), "description")
    healthy = create(running, "healthy-key")
    create(running, "theirs", parent=OTHER)
    altered = only(project_log(running), event_type, victim)

    def alter(db: sqlite3.Connection) -> None:
        if alteration == "garbled":  # one byte: the row no longer decodes
            state = stored_state(db, altered.position)
            db.execute(
                "UPDATE stored_events SET state = ? WHERE rowid = ?",
                (b"\xff" + state[1:], altered.position),
            )
        else:
            db.execute("DELETE FROM stored_events WHERE rowid = ?", (altered.position,))
        # The start checks only what follows the server's newest checkpoint, which a
        # start-up check racing the writes above may have moved past the alteration:
        # without checkpoints it checks everything (the checkpoints' own tests are below).
        db.execute("DELETE FROM audit_checkpoints")

    caplog.set_level(logging.INFO)
    tamper(running, alter)

    name = healthy.api_key.name
    assert get(running, name).display_name == "healthy-key"
    verdict = running.validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(secret=healthy.secret, deployment=LLAMA)
    ).verdict
    assert verdict == vpb.VERDICT_ALLOWED
    listed = running.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PROJECT)).api_keys
    assert name in [key.name for key in listed]
    logged = wait_for_log(caplog, "audit log verification failed")
    assert f"position {altered.position}:" in logged
    assert verify(running).first_bad_position == altered.position


SINCE = apb.VerifyAuditLogRequest.SCOPE_SINCE_STORED_CHECKPOINT
FULL = apb.VerifyAuditLogRequest.SCOPE_FULL


def verify_scope(running: RunningServer, scope: int) -> apb.VerifyAuditLogResponse:
    response: apb.VerifyAuditLogResponse = audit(running).VerifyAuditLog(
        apb.VerifyAuditLogRequest(scope=scope)  # type: ignore[arg-type]
    )
    return response


def restart_and_wait_for_the_start_check(
    running: RunningServer,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[sqlite3.Connection], None] = lambda db: None,
) -> str:
    """Restart (altering the file meanwhile); the start-up check's log message."""
    caplog.set_level(logging.INFO)
    caplog.clear()
    tamper(running, change)
    deadline = time.monotonic() + STREAM_TIMEOUT
    while time.monotonic() < deadline:
        for record in list(caplog.records):
            message = record.getMessage()
            if message.startswith(("audit log verified", "audit log verification failed")):
                return message
        time.sleep(0.05)
    raise AssertionError("the start-up check logged nothing")


def test_a_restart_verifies_only_the_events_after_the_stored_checkpoint(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    log = make_history(running)
    full = verify_scope(running, FULL)  # passes: its head is stored as a checkpoint
    assert (full.ok, full.events_checked, full.verified_from) == (True, len(log), 0)
    create(running, "later-1")
    create(running, "later-2", parent=OTHER)
    logged = restart_and_wait_for_the_start_check(running, caplog)
    assert logged == f"audit log verified: 2 events after the checkpoint at position {len(log)}"
    since = verify_scope(running, SINCE)  # the start stored its head in turn
    assert (since.ok, since.events_checked, since.verified_from) == (True, 0, len(log) + 2)
    assert since.checkpoint.position == len(log) + 2
    assert verify_scope(running, FULL).events_checked == len(log) + 2


def test_an_event_altered_before_the_stored_checkpoint_is_found_by_the_full_check(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    log = make_history(running)
    assert verify_scope(running, FULL).ok
    [edited] = [e for e in log if e.deployment_attached.deployment == MISTRAL]

    def edit(db: sqlite3.Connection) -> None:
        state = stored_state(db, edited.position)
        at = state.index(b"mistral")
        changed = state[:at] + b"n" + state[at + 1 :]
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (changed, edited.position))

    logged = restart_and_wait_for_the_start_check(running, caplog, edit)
    # By design the start trusts what its checkpoint covers...
    assert logged == f"audit log verified: 0 events after the checkpoint at position {len(log)}"
    assert verify_scope(running, SINCE).ok
    full = verify_scope(running, FULL)  # ...and the full check still finds it
    assert (full.ok, full.first_bad_position) == (False, edited.position)
    assert verify(running).first_bad_position == edited.position  # unspecified = full


def test_history_rewritten_with_the_stored_checkpoint_fixed_up_is_found_by_its_seal(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone edits an event, recomputes every link after it, and points the stored
    checkpoint at the new head: the checkpoint's seal no longer holds."""
    log = make_history(running)
    head = verify_scope(running, FULL).checkpoint
    [edited] = [e for e in log if e.deployment_attached.deployment == MISTRAL]

    def rewrite(db: sqlite3.Connection) -> None:
        state = stored_state(db, edited.position)
        at = state.index(b"mistral")
        db.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?",
            (state[:at] + b"n" + state[at + 1 :], edited.position),
        )
        previous = bytes(32)
        query = (
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
            "ORDER BY rowid"
        )
        for position, originator_id, version, topic, row_state in db.execute(query).fetchall():
            row = Notification(
                id=position,
                originator_id=uuid.UUID(originator_id),
                originator_version=version,
                topic=topic,
                state=row_state,
            )
            previous = chain_link(previous, row)
            db.execute("UPDATE audit_log SET link = ? WHERE position = ?", (previous, position))
        db.execute(
            "UPDATE audit_checkpoints SET link = ? WHERE position = ?", (previous, head.position)
        )

    logged = restart_and_wait_for_the_start_check(running, caplog, rewrite)
    # (its number depends on how many checks stored one: the start-up check races the writes)
    assert re.fullmatch(
        f"audit log verification failed: position {head.position}: "
        r"stored checkpoint \d+ does not match its seal",
        logged,
    ), logged
    for scope in (SINCE, FULL):
        result = verify_scope(running, scope)
        assert (result.ok, result.first_bad_position) == (False, head.position)
        assert "seal" in result.problem
    # The links alone are consistent again; the auditor's own checkpoint disagrees too.
    assert not verify(running, checkpoint=head).ok


def test_a_stored_checkpoint_moved_off_the_chain_is_found(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    make_history(running)
    head = verify_scope(running, FULL).checkpoint

    def move(db: sqlite3.Connection) -> None:
        db.execute("UPDATE audit_checkpoints SET position = 3 WHERE position = ?", (head.position,))

    logged = restart_and_wait_for_the_start_check(running, caplog, move)
    assert logged.startswith("audit log verification failed: position 3: stored checkpoint"), logged
    assert not verify_scope(running, FULL).ok


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> str:
    """The first captured log message containing `text`; the server verifies in the
    background after it starts serving."""
    deadline = time.monotonic() + STREAM_TIMEOUT
    while time.monotonic() < deadline:
        for record in list(caplog.records):
            if text in record.getMessage():
                return record.getMessage()
        time.sleep(0.05)
    raise AssertionError(f"no log message containing {text!r}")


# --- no secrets ----------------------------------------------------------------------


def secret_forms(secret: str) -> list[bytes]:
    """The secret in every encoding a response could carry it in, and its digest."""
    digest = keyformat.digest(secret)
    return [
        *encodings(secret),
        secret[len(keyformat.PREFIX) :].encode(),
        digest,
        digest.hex().encode(),
        digest.hex().upper().encode(),
        base64.b64encode(digest).rstrip(b"="),
        base64.urlsafe_b64encode(digest).rstrip(b"="),
    ]


def test_no_audit_response_carries_a_secret_or_its_digest(running: RunningServer) -> None:
    clock = running.clock
    created = [
        create(running, "secret-a"),
        create(running, "secret-b", expire_time=stamp(START + timedelta(days=3))),
        create(running, "secret-x", parent=OTHER),
    ]
    a, b, x = (c.api_key.name for c in created)
    clock.advance(minutes=1)
    attach(running, a, MISTRAL)
    update(
        running, pb.ApiKey(name=b, display_name="B", expire_time=stamp(START + timedelta(days=9)))
    )
    delete(running, x)
    purge(running, x)

    responses: list[bytes] = []
    service = audit(running)
    for c in created:
        name = c.api_key.name
        for size in (0, 1):
            history = apb.ListApiKeyEventsRequest(name=name, page_size=size)
            responses.append(service.ListApiKeyEvents(history).SerializeToString())
        for version in range(1, len(key_history(running, name)) + 1):
            by_version = apb.GetApiKeyRevisionRequest(name=name, version=version)
            responses.append(service.GetApiKeyRevision(by_version).SerializeToString())
        by_time = apb.GetApiKeyRevisionRequest(name=name, as_of_time=stamp(clock.now))
        responses.append(service.GetApiKeyRevision(by_time).SerializeToString())
    for parent in (PROJECT, OTHER):
        for size in (0, 1):
            log = apb.ListEventsRequest(parent=parent, page_size=size)
            responses.append(service.ListEvents(log).SerializeToString())
        events = project_log(running, parent)
        stream = watch(running, after=0, parent=parent)
        try:
            responses += [next(stream).SerializeToString() for _ in events]
        finally:
            stream.cancel()
        responses.append(verify(running, parent).SerializeToString())
    head = verify(running)
    responses += [
        head.SerializeToString(),
        verify(running, checkpoint=head.checkpoint).SerializeToString(),
    ]

    everything = b"\n".join(responses)
    assert all(c.api_key.secret_hint.encode() in everything for c in created)  # the scan sees text
    for c in created:
        for form in secret_forms(c.secret):
            assert form not in everything


# --- PurgeApiKey (crypto-shredding) --------------------------------------------------


def test_only_a_deleted_key_can_be_purged_and_only_once(running: RunningServer) -> None:
    name = create(running, "purge-me").api_key.name
    assert code_of(lambda: purge(running, name)) == grpc.StatusCode.FAILED_PRECONDITION
    assert get(running, name).display_name == "purge-me"
    delete(running, name)
    purge(running, name)
    assert code_of(lambda: purge(running, name)) == grpc.StatusCode.FAILED_PRECONDITION
    unknown = f"{PROJECT}/apiKeys/never-made"
    assert code_of(lambda: purge(running, unknown)) == grpc.StatusCode.NOT_FOUND
    assert [e.event_type for e in key_history(running, name)] == [
        "KeyCreated",
        "KeyDeleted",
        "PersonalDataPurged",
    ]


def test_purged_key_keeps_its_whole_history_without_its_personal_data(
    running: RunningServer,
) -> None:
    clock = running.clock
    created = create(running, "shredded", display_name="Zanzibar Portal", description="Jane Roe")
    name = created.api_key.name
    clock.advance(minutes=1)
    update(
        running,
        pb.ApiKey(name=name, display_name="Zanzibar Two", description="Jane Roe again"),
        "display_name",
        "description",
    )
    attach(running, name, MISTRAL)
    clock.advance(minutes=1)
    delete(running, name)
    history = key_history(running, name)
    checkpoint = verify(running).checkpoint
    clock.advance(minutes=1)
    purged_at = clock.now
    answer = purge(running, name)

    now = get(running, name)
    assert answer == now
    assert (now.display_name, now.description) == ("", "")
    assert moment_of(now.purge_time) == purged_at
    assert now.state == pb.ApiKey.STATE_DELETED
    assert list(now.deployments) == [LLAMA, MISTRAL]
    listed = running.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PROJECT, show_deleted=True))
    [row] = listed.api_keys
    assert (row.display_name, row.description) == ("", "")

    after = key_history(running, name)
    assert len(after) == len(history) + 1
    for old, new in zip(history, after, strict=False):  # same events, same proof
        assert (old.position, old.version, old.event_type, old.occur_time, old.hash) == (
            new.position,
            new.version,
            new.event_type,
            new.occur_time,
            new.hash,
        )
    assert after[-1].event_type == "PersonalDataPurged"
    assert after[-1].WhichOneof("values") == "personal_data_purged"
    assert moment_of(after[-1].occur_time) == purged_at
    created_event, details_event = after[0], after[1]
    assert created_event.personal_data_erased and details_event.personal_data_erased
    assert created_event.key_created == apb.KeyCreatedValues(
        display_name="",
        description="",
        deployments=[LLAMA],
        secret_hint=created.api_key.secret_hint,
    )
    # Both fields were changed, so both stay present: changed, to something erased.
    assert details_event.details_changed == apb.DetailsChangedValues(
        display_name="", description=""
    )
    assert details_event.details_changed.HasField("display_name")
    assert after[2].deployment_attached.deployment == MISTRAL
    assert project_log(running) == after

    for version in (1, 2, 3):
        then = revision(running, name, version=version)
        assert (then.display_name, then.description) == ("", ""), version
    assert list(revision(running, name, version=3).deployments) == [LLAMA, MISTRAL]
    assert revision(running, name, as_of=START).display_name == ""

    result = verify(running, checkpoint=checkpoint)  # the events' bytes never changed
    assert result.ok, result.problem
    assert result.events_checked == len(after)


def test_purged_names_are_in_no_database_file(running: RunningServer) -> None:
    words = ["Quetzal Gateway", "owned by Jane Roe", "Quetzal Renamed", "Jane Roe's second"]
    keep = "Kept Ocelot Name"
    name = create(running, "forget-me", display_name=words[0], description=words[1]).api_key.name
    update(
        running,
        pb.ApiKey(name=name, display_name=words[2], description=words[3]),
        "display_name",
        "description",
    )
    create(running, "remember-me", display_name=keep)
    delete(running, name)
    purge(running, name)

    files = sorted(running.database.parent.glob(running.database.name + "*"))
    assert {f.name for f in files} >= {"edgekeys.db", "edgekeys.db-wal"}
    contents = {f.name: f.read_bytes() for f in files}
    # The scan sees plaintext where it is allowed: the catalog's copy of a live key's name.
    assert any(keep.encode() in data for data in contents.values())
    for word in words:
        assert [f for f, data in contents.items() if word.encode() in data] == [], word
    assert (get(running, name).display_name, get(running, name).description) == ("", "")


def test_purge_erases_the_names_in_revisions_replayed_from_snapshots(
    running: RunningServer,
) -> None:
    name = create(running, "long-lived", display_name="Snapshot Sable").api_key.name
    for version in range(2, 103):
        update(running, pb.ApiKey(name=name, description=f"Sable notes {version}"), "description")
    delete(running, name)
    assert revision(running, name, version=100).description == "Sable notes 100"
    purge(running, name)

    for version in (1, 99, 100, 101, 103, 104):
        old = revision(running, name, version=version)
        assert (old.display_name, old.description) == ("", ""), version
    assert get(running, name).description == ""
    assert all(e.personal_data_erased for e in key_history(running, name)[:102])
    with closing(sqlite3.connect(running.database)) as db:
        snapshots = [state for (state,) in db.execute("SELECT state FROM stored_snapshots")]
    assert snapshots  # the snapshot at version 100 holds the names sealed, never in clear
    assert not any(b"Sable" in state for state in snapshots)
    assert verify(running).ok


def test_a_long_check_runs_in_a_child_process_with_the_same_answer(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large store's check runs in a child process (the serving process's GIL stays
    free); forced here for a small one, it finds what the check in process finds."""
    for n in range(3):
        running.create(display_name=f"key {n}")
    in_process = verify_scope(running, FULL)
    monkeypatch.setattr(audit_log, "ELSEWHERE_FROM", 0)
    elsewhere = verify_scope(running, FULL)
    assert running.server.store.audit._pool is not None  # the child did the work
    assert (
        (elsewhere.ok, elsewhere.events_checked)
        == (True, in_process.events_checked)
        == (
            True,
            3,
        )
    )
