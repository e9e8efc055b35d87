"""Shared fixtures: a settable clock and an in-process edgekeys server on a free port."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from eventsourcing import persistence

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, validation_pb2_grpc
from service.runtime.config import Settings
from service.runtime.server import Server
from tests.postgres import fresh_database

START = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class FakeClock:
    """An injected clock that only moves when a test moves it."""

    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class RunningServer:
    """A Server on its own event loop thread, with sync client stubs."""

    database: Path
    clock: FakeClock
    database_url: str = ""  # instead of the SQLite file `database`
    options: dict[str, Any] = field(default_factory=dict)  # more Settings
    token: str = ""  # sent on every call of `channel`
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _server: Server | None = None
    _thread: threading.Thread | None = None
    channel: grpc.Channel | None = None

    def start(self) -> "RunningServer":
        settings = Settings(
            address="127.0.0.1:0",
            database_url=self.database_url or f"sqlite:///{self.database}",
            **{"http_address": "off", **self.options},
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> Server:
            server = Server(settings, clock=self.clock)
            await server.start()
            return server

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self._server.port}")
        if self.token:
            self.channel = grpc.intercept_channel(self.channel, Bearer(self.token))
        return self

    def stop(self, grace: float = 0) -> None:
        """Idempotent: a test may stop the server before its fixture does."""
        if self._loop.is_closed():
            return
        if self.channel is not None:
            self.channel.close()
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(30)
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()

    def on_server_thread(self, function: Callable[[], object]) -> None:
        """Run `function` on the thread that runs the server's event loop."""

        async def call() -> None:
            function()

        asyncio.run_coroutine_threadsafe(call(), self._loop).result(30)

    @contextmanager
    def store_cut_off(self) -> Iterator[None]:
        """As if the database could not be reached: every poll of the store fails, and
        the server sees it so (`store_reachable` false) before the block runs."""
        recorder = self.server.store.keys.recorder

        def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise persistence.OperationalError("cut off (by the test)")

        self.on_server_thread(lambda: setattr(recorder, "select_notifications", unreachable))
        self.on_server_thread(self.server.store.poll_now)
        try:
            _until(lambda: not self.server.store.reachable)
            yield
        finally:
            self.on_server_thread(lambda: vars(recorder).pop("select_notifications"))
            _until(lambda: self.server.store.reachable)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def server(self) -> Server:
        assert self._server is not None
        return self._server

    @property
    def keys(self) -> api_keys_pb2_grpc.ApiKeyServiceStub:
        return api_keys_pb2_grpc.ApiKeyServiceStub(self.channel)

    @property
    def validation(self) -> validation_pb2_grpc.ValidationServiceStub:
        return validation_pb2_grpc.ValidationServiceStub(self.channel)

    def create(
        self,
        display_name: str = "test key",
        deployments: tuple[str, ...] = ("projects/acme/deployments/llama",),
        parent: str = "projects/acme",
        **fields: Any,
    ) -> pb.CreateApiKeyResponse:
        """Create a key with sensible defaults; `fields` go to the ApiKey message."""
        response: pb.CreateApiKeyResponse = self.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=parent,
                api_key=pb.ApiKey(
                    display_name=display_name, deployments=list(deployments), **fields
                ),
            )
        )
        return response


def _until(condition: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.01)


class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer TOKEN` to every call."""

    def __init__(self, token: str) -> None:
        self.metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self.metadata],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, proceed: Any, details: Any, request: Any) -> Any:
        return proceed(self._details(details), request)

    def intercept_unary_stream(self, proceed: Any, details: Any, request: Any) -> Any:
        return proceed(self._details(details), request)


class _CallDetails(
    NamedTuple(
        "_CallDetails",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", Any),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_stores: run the module's `running` tests on SQLite and on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The database URL of a fresh store: SQLite unless the test asks for PostgreSQL."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'edgekeys.db'}"
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
def running(tmp_path: Path, clock: FakeClock, store: str) -> Iterator[RunningServer]:
    server = RunningServer(database=tmp_path / "edgekeys.db", clock=clock, database_url=store)
    yield server.start()
    server.stop()


@pytest.fixture
def serving(tmp_path: Path, clock: FakeClock, store: str) -> Iterator[Callable[..., RunningServer]]:
    """Starts servers with more Settings (`options`), on `store` unless a URL is given;
    stops them all at the end."""
    started: list[RunningServer] = []

    def start(database_url: str = "", **options: Any) -> RunningServer:
        server = RunningServer(tmp_path / "edgekeys.db", clock, database_url or store, options)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()
