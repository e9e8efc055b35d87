"""GetApiKey's reads, answered in batches on one reader thread (service.api.reads)."""

import grpc
import pytest

from edgekeys.v1 import api_keys_pb2 as pb
from tests.conftest import RunningServer
from tests.postgres import _admin, terminate, terminate_where

pytestmark = pytest.mark.both_stores

# The reader's statement, as PostgreSQL shows it in pg_stat_activity.
READER_QUERY = "query LIKE '%%FROM catalog_api_keys WHERE name = ANY%%'"


def test_many_concurrent_gets_each_answer_their_own_key(running: RunningServer) -> None:
    created = [running.create(display_name=f"key {n}").api_key for n in range(20)]
    missing = "projects/acme/apiKeys/never-created"
    asked = [key.name for key in created] * 10 + [missing] * 5
    calls = [running.keys.GetApiKey.future(pb.GetApiKeyRequest(name=name)) for name in asked]

    for name, call in zip(asked, calls, strict=True):
        if name == missing:
            with pytest.raises(grpc.RpcError) as error:
                call.result()
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            continue
        key = call.result().api_key
        expected = next(k for k in created if k.name == name)
        assert (key.name, key.display_name, key.etag) == (
            name,
            expected.display_name,
            expected.etag,
        )


def test_a_get_sees_the_change_just_made(running: RunningServer) -> None:
    key = running.create(display_name="before").api_key
    running.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name))  # the reader is open
    running.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=key.name, display_name="after"))
    )

    got = running.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key
    assert (got.display_name, got.etag) != (key.display_name, key.etag)
    assert got.display_name == "after"


def _postgres_only(store: str) -> None:
    if not store.startswith("postgresql"):
        pytest.skip("cutting the reader's connection takes a database server")


def test_a_reader_whose_connection_died_reconnects_unnoticed(
    running: RunningServer, store: str
) -> None:
    _postgres_only(store)
    key = running.create().api_key
    running.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name))
    assert terminate_where(store, READER_QUERY) == 1  # as a database restart would

    got = running.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name), timeout=10)
    assert got.api_key.name == key.name


def test_a_database_refusing_connections_answers_unavailable_then_recovers(
    running: RunningServer, store: str
) -> None:
    _postgres_only(store)
    key = running.create().api_key
    running.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name))
    database = store.rsplit("/", 1)[1]
    with _admin() as admin:
        admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
    try:
        assert terminate(store, "edgekeys") >= 1  # the reader's and the pool's
        with pytest.raises(grpc.RpcError) as error:
            running.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        with _admin() as admin:
            admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")

    got = running.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name), timeout=10)
    assert got.api_key.name == key.name
