"""Random sequences of changes, clock moves and restarts against an in-process server,
checked after every step against a plain-Python model of the rules (DESIGN.md, README):
every verdict, the listing, and a replay of the store from scratch."""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from grpc import StatusCode as Code
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from projections.catalog import Catalog, KeyRecord
from projections.index import Entry, ValidationIndex
from service.api.messages import api_key_message
from service.domain import keyformat
from service.domain.api_key import MAX_DEPLOYMENTS, ApiKey
from service.storage.database import sql_engine
from service.write.keystore import KeyStore
from tests.conftest import START, FakeClock, RunningServer

OK, INVALID, NOT_FOUND = Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND
EXISTS, PRECONDITION, ABORTED = Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION, Code.ABORTED
PROJECTS = ("acme", "zeta")
KEY_IDS = ("key-a", "key-b", "key-c")
NAMES = [f"projects/{p}/apiKeys/{k}" for p in PROJECTS for k in KEY_IDS]
COMMON = ("llama", "mistral", "gemma")
BULK = tuple(f"bulk-{i:03}" for i in range(MAX_DEPLOYMENTS + 1))
MICROSECOND = timedelta(microseconds=1)

display_names = st.sampled_from(["Portal", "Batch jobs", "Ünïcode ✓", "  ", "x" * 63, "x" * 64])
descriptions = st.sampled_from(["", "for the portal", "d" * 300, "d" * 301])
# offsets from now: the past, now itself, a microsecond on, seconds on; None: never
expiries = st.none() | st.sampled_from([-1_000_000, 0, 1, 1_000_000, 3_000_000]).map(
    lambda us: timedelta(microseconds=us)
)
etags = st.sampled_from(["", "current", "stale"])


def deployment(project: str, name: str) -> str:
    return f"projects/{project}/deployments/{name}"


@dataclass
class Key:
    """The model of one key; `record` is what `api_key_message` reads."""

    name: str
    secret: str
    display_name: str
    description: str
    deployments: list[str]
    expire_time: datetime | None
    created_on: datetime
    modified_on: datetime
    delete_time: datetime | None = None
    purge_time: datetime | None = None
    version: int = 1
    previous_secret_until: datetime | None = None  # the model does not rotate

    @property
    def project(self) -> str:
        return self.name.split("/")[1]

    @property
    def secret_hint(self) -> str:
        return keyformat.hint(self.secret)

    @property
    def record(self) -> KeyRecord:
        return KeyRecord(
            self.name,
            self.display_name,
            self.description,
            self.deployments,
            self.expire_time,
            self.created_on,
            self.modified_on,
            self.delete_time,
            self.purge_time,
            self.secret_hint,
            self.version,
            0,
            self.previous_secret_until,
        )

    def verdict(self, deployment: str, now: datetime) -> "vpb.Verdict":
        if self.delete_time is not None:
            return vpb.VERDICT_NOT_FOUND
        if self.expire_time is not None and self.expire_time <= now:
            return vpb.VERDICT_EXPIRED
        if deployment not in self.deployments:
            return vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED
        return vpb.VERDICT_ALLOWED


@dataclass
class Model:
    """The rules, each command answering the status code the API must give and, when
    that is OK, changing the model as the key changes."""

    clock: FakeClock
    keys: dict[str, Key] = field(default_factory=dict)  # in creation order

    @property
    def events(self) -> int:
        return sum(key.version for key in self.keys.values())

    def create_outcome(
        self,
        name: str,
        display_name: str,
        description: str,
        deployments: list[str],
        expire_time: datetime | None,
    ) -> Code:
        if not _valid_details(display_name, description) or len(deployments) > MAX_DEPLOYMENTS:
            return INVALID
        if expire_time is not None and expire_time <= self.clock.now:
            return INVALID
        return EXISTS if name in self.keys else OK

    def change(
        self,
        name: str,
        etag: str,
        command: Callable[[Key], Code | int],
    ) -> Code:
        """The checks every change shares, then `command`: a code, or the number of
        events it recorded."""
        key = self.keys.get(name)
        if key is None:
            return NOT_FOUND
        if etag and etag != str(key.version):
            return ABORTED
        if key.delete_time is not None:
            return PRECONDITION
        outcome = command(key)
        if isinstance(outcome, Code):
            return outcome
        if outcome:
            key.version += outcome
            key.modified_on = self.clock.now
        return OK

    def update(
        self, name: str, etag: str, details: dict[str, str], expiry: dict[str, datetime | None]
    ) -> Code:
        if not _valid_details(details.get("display_name", "x"), details.get("description", "")):
            return INVALID

        def update(key: Key) -> Code | int:
            new = {k: v for k, v in details.items() if getattr(key, k) != v}
            expire_changed = bool(expiry) and expiry["expire_time"] != key.expire_time
            moment = expiry.get("expire_time")
            if expire_changed and moment is not None and moment <= self.clock.now:
                return INVALID
            for attribute, value in (new | (expiry if expire_changed else {})).items():
                setattr(key, attribute, value)
            return bool(new) + expire_changed

        return self.change(name, etag, update)

    def attach(self, name: str, etag: str, target: str) -> Code:
        if not target.startswith(f"{_project(name)}/"):
            return INVALID

        def attach(key: Key) -> Code | int:
            if target in key.deployments:
                return EXISTS
            if len(key.deployments) >= MAX_DEPLOYMENTS:
                return PRECONDITION
            key.deployments.append(target)
            return 1

        return self.change(name, etag, attach)

    def detach(self, name: str, etag: str, target: str) -> Code:
        if not target.startswith(f"{_project(name)}/"):
            return INVALID

        def detach(key: Key) -> Code | int:
            if target not in key.deployments:
                return NOT_FOUND
            key.deployments.remove(target)
            return 1

        return self.change(name, etag, detach)

    def delete(self, name: str, etag: str) -> Code:
        def delete(key: Key) -> Code | int:
            key.delete_time = self.clock.now
            return 1

        return self.change(name, etag, delete)


def _valid_details(display_name: str, description: str) -> bool:
    return bool(display_name.strip()) and len(display_name) <= 63 and len(description) <= 300


def _project(name: str) -> str:
    return "/".join(name.split("/")[:2])


def outcome(call: Callable[[], Message]) -> tuple[Code, Any]:
    try:
        return OK, call()
    except grpc.RpcError as error:
        return error.code(), None


class KeyLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.clock = FakeClock(START)
        self.model = Model(self.clock)
        database = Path(self.directory.name) / "edgekeys.db"
        self.running = RunningServer(database=database, clock=self.clock).start()
        self.store = KeyStore(f"sqlite:///{database}", self.clock)  # a second reader
        self.replayed: tuple[int, set[Entry], list[list[KeyRecord]]] | None = None

    def teardown(self) -> None:
        self.running.stop()
        self.store.close()
        self.directory.cleanup()

    # --- commands ---------------------------------------------------------------

    @rule(
        data=st.data(),
        project=st.sampled_from(PROJECTS),
        key_id=st.sampled_from(("", *KEY_IDS)),
        display_name=display_names,
        description=descriptions,
        expiry=expiries,
    )
    def create(
        self,
        data: st.DataObject,
        project: str,
        key_id: str,
        display_name: str,
        description: str,
        expiry: timedelta | None,
    ) -> None:
        bulk = st.sampled_from([MAX_DEPLOYMENTS - 1, MAX_DEPLOYMENTS, MAX_DEPLOYMENTS + 1])
        names = data.draw(
            st.lists(st.sampled_from(COMMON), unique=True, max_size=3)
            | bulk.map(lambda n: list(BULK[:n]))
        )
        deployments = [deployment(project, d) for d in names]
        expire_time = None if expiry is None else self.clock.now + expiry
        name = f"projects/{project}/apiKeys/{key_id}"
        expected = self.model.create_outcome(
            name, display_name, description, deployments, expire_time
        )
        spec = pb.ApiKey(display_name=display_name, description=description)
        spec.deployments.extend(deployments)
        if expire_time is not None:
            spec.expire_time.FromDatetime(expire_time)
        request = pb.CreateApiKeyRequest(parent=f"projects/{project}", api_key_id=key_id)
        request.api_key.CopyFrom(spec)
        code, response = outcome(lambda: self.running.keys.CreateApiKey(request))
        assert code == expected
        if code == OK:
            created = response.api_key.name
            assert key_id in ("", created.rsplit("/", 1)[1])
            now = self.clock.now
            self.model.keys[created] = Key(
                created, response.secret, display_name, description, deployments, expire_time,
                now, now,
            )  # fmt: skip

    @rule(
        data=st.data(),
        etag=etags,
        fields=st.sets(st.sampled_from(("display_name", "description", "expire_time"))),
        use_mask=st.booleans(),
        display_name=display_names,
        description=descriptions,
        expiry=expiries,
    )
    def update(
        self,
        data: st.DataObject,
        etag: str,
        fields: set[str],
        use_mask: bool,
        display_name: str,
        description: str,
        expiry: timedelta | None,
    ) -> None:
        name = self.target(data)
        spec = pb.ApiKey(name=name, etag=self.etag(name, etag))
        if "display_name" in fields:
            spec.display_name = display_name
        if "description" in fields:
            spec.description = description
        expire_time = None if expiry is None else self.clock.now + expiry
        if "expire_time" in fields and expire_time is not None:
            spec.expire_time.FromDatetime(expire_time)
        request = pb.UpdateApiKeyRequest(api_key=spec)
        if use_mask:
            request.update_mask.CopyFrom(FieldMask(paths=sorted(fields)))
        else:  # no mask: whatever is set (an empty string or unset expiry is not)
            fields = {f for f in fields if f != "expire_time" or expire_time is not None}
            fields = {f for f in fields if f == "expire_time" or getattr(spec, f)}
        details: dict[str, str] = {
            f: getattr(spec, f) for f in ("display_name", "description") if f in fields
        }
        expire = {"expire_time": expire_time} if "expire_time" in fields else {}
        expected = self.model.update(name, spec.etag, details, expire)
        code, _ = outcome(lambda: self.running.keys.UpdateApiKey(request))
        assert code == expected

    @rule(
        data=st.data(),
        etag=etags,
        attach=st.booleans(),
        project=st.sampled_from(PROJECTS),
        place=st.sampled_from((*COMMON, BULK[0], BULK[-1])),
    )
    def attach_or_detach(
        self, data: st.DataObject, etag: str, attach: bool, project: str, place: str
    ) -> None:
        name = self.target(data)
        request = {"name": name, "deployment": deployment(project, place)}
        request["etag"] = self.etag(name, etag)
        if attach:
            expected = self.model.attach(name, request["etag"], request["deployment"])
            call = lambda: self.running.keys.AttachDeployment(  # noqa: E731
                pb.AttachDeploymentRequest(**request)
            )
        else:
            expected = self.model.detach(name, request["etag"], request["deployment"])
            call = lambda: self.running.keys.DetachDeployment(  # noqa: E731
                pb.DetachDeploymentRequest(**request)
            )
        assert outcome(call)[0] == expected

    @rule(data=st.data(), etag=etags)
    def delete(self, data: st.DataObject, etag: str) -> None:
        name = self.target(data)
        request = pb.DeleteApiKeyRequest(name=name, etag=self.etag(name, etag))
        expected = self.model.delete(name, request.etag)
        assert outcome(lambda: self.running.keys.DeleteApiKey(request))[0] == expected

    @rule(step=st.sampled_from([MICROSECOND, timedelta(seconds=1), timedelta(seconds=2)]))
    def advance(self, step: timedelta) -> None:
        self.clock.now += step

    @precondition(lambda self: any(k.expire_time for k in self.model.keys.values()))
    @rule(data=st.data(), before=st.booleans())
    def advance_to_an_expiry(self, data: st.DataObject, before: bool) -> None:
        """To the very edge: a key with expire_time T is allowed until T − 1 µs."""
        moments = sorted({k.expire_time for k in self.model.keys.values() if k.expire_time})
        moment = data.draw(st.sampled_from(moments)) - (MICROSECOND if before else timedelta())
        self.clock.now = max(self.clock.now, moment)

    @rule()
    def restart(self) -> None:
        self.running.restart()

    # --- what must hold after every step ----------------------------------------

    @invariant()
    def verdicts_follow_the_rules(self) -> None:
        unknown = keyformat.new_secret()
        mistyped = unknown[:-1] + ("a" if unknown[-1] != "a" else "b")
        secrets = [unknown, mistyped, "", "edk_short"] + [
            k.secret for k in self.model.keys.values()
        ]
        places = [deployment(p, d) for p in PROJECTS for d in (*COMMON, BULK[0])]
        asked = [vpb.ValidateApiKeyRequest(secret=s, deployment=d) for s in secrets for d in places]
        answers = self.running.validation.ValidateApiKeys(
            vpb.ValidateApiKeysRequest(requests=asked)
        ).responses
        expected = [self.expected_verdict(r) for r in asked]
        assert [(a.verdict, a.api_key, a.expire_time) for a in answers] == expected
        single = self.running.validation.ValidateApiKey(asked[-1])
        assert (single.verdict, single.api_key, single.expire_time) == expected[-1]

    def expected_verdict(self, request: vpb.ValidateApiKeyRequest) -> tuple[Any, str, Any]:
        key = next((k for k in self.model.keys.values() if k.secret == request.secret), None)
        no_time = vpb.ValidateApiKeyResponse().expire_time
        if not keyformat.is_well_formed(request.secret):
            return vpb.VERDICT_MALFORMED, "", no_time
        if key is None or key.delete_time is not None:
            return vpb.VERDICT_NOT_FOUND, "", no_time
        return (
            key.verdict(request.deployment, self.clock.now),
            key.name,
            api_key_message(key.record).expire_time,
        )

    @invariant()
    def listing_matches_the_model(self) -> None:
        for project in PROJECTS:
            for show_deleted in (True, False):
                listed = self.running.keys.ListApiKeys(
                    pb.ListApiKeysRequest(
                        parent=f"projects/{project}", page_size=1000, show_deleted=show_deleted
                    )
                )
                for key in listed.api_keys:
                    key.ClearField("last_use_time")  # not modelled: see test_rotation
                assert list(listed.api_keys) == [
                    api_key_message(k.record)
                    for k in self.model.keys.values()
                    if k.project == project and (show_deleted or k.delete_time is None)
                ]

    @invariant()
    def a_replay_of_the_store_rebuilds_the_same_projections(self) -> None:
        """A fresh index and catalog fed every stored event hold what the server holds."""
        if self.replayed is None or self.replayed[0] != self.model.events:
            self.replayed = self.replay()
        live = self.running.server
        assert (live.index.position, set(live.index.snapshot()[1])) == self.replayed[:2]
        listed = [
            live.store.catalog.list(p, after=0, limit=1000, show_deleted=True) for p in PROJECTS
        ]
        # last_use_time is not from the events: the validations above set it
        unused = [[replace(r, last_use_time=None) for r in page] for page in listed]
        assert unused == self.replayed[2]

    def replay(self) -> tuple[int, set[Entry], list[list[KeyRecord]]]:
        """The index position and entries, and each project's catalog listing, that
        replaying the store from its first event gives."""
        rows = self.store.recorder.select_notifications(
            start=0, limit=10 * self.model.events + 10, inclusive_of_start=False
        )
        assert len(rows) == self.model.events
        events = [
            (row.id, cast(ApiKey.Event, self.store.mapper.to_domain_event(row))) for row in rows
        ]
        index = ValidationIndex()
        for position, event in events:
            index.apply(position, event)
        catalog = Catalog(sql_engine("sqlite://"))  # in memory
        catalog.process(events)
        listed = [catalog.list(p, after=0, limit=1000, show_deleted=True) for p in PROJECTS]
        catalog.engine.dispose()
        return index.position, set(index.snapshot()[1]), listed

    # --- helpers ----------------------------------------------------------------

    def target(self, data: st.DataObject) -> str:
        """A key name: one the model knows (deleted or not), or one never created.
        In creation order, not sorted: a name the server picked is random, and an order
        that moved with it would make Hypothesis's replays take other paths."""
        names = list(dict.fromkeys([*NAMES, *self.model.keys]))
        return data.draw(st.sampled_from(names), label="name")

    def etag(self, name: str, kind: str) -> str:
        key = self.model.keys.get(name)
        version = key.version if key else 1
        return {"": "", "current": str(version), "stale": str(version + 7)}[kind]


TestKeyLifecycle = KeyLifecycle.TestCase
