"""Prometheus metrics on --metrics-address: scraped over HTTP, they move with the calls."""

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from service.domain import keyformat
from service.domain.names import KeyName
from service.write.keystore import KeyStore
from tests.api.test_authz import check
from tests.api.test_callers import write_callers
from tests.conftest import FakeClock, RunningServer

LLAMA = "projects/acme/deployments/llama"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: RunningServer) -> Samples:
    port = server.server.metrics_port
    assert port, "the server serves no metrics"
    return scraped(port)


def scraped(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return parsed(reply.read().decode())


def parsed(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered(tmp_path: Path, clock: FakeClock, store: str) -> Iterator[RunningServer]:
    # No polling to speak of: only this test's writes move the projections.
    options = {"metrics_address": "127.0.0.1:0", "poll_interval": 3600.0}
    server = RunningServer(tmp_path / "edgekeys.db", clock, database_url=store, options=options)
    yield server.start()
    server.stop()


@pytest.mark.both_stores
def test_validations_are_counted_by_verdict_and_calls_timed_by_method(
    metered: RunningServer,
) -> None:
    key = metered.create()
    before = scrape(metered)
    for secret, times in ((key.secret, 3), (keyformat.new_secret(), 2), ("not a key", 1)):
        for _ in range(times):
            metered.validation.ValidateApiKey(
                vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
            )
    check(metered, {"x-api-key": key.secret})
    metered.create()
    with pytest.raises(grpc.RpcError):
        metered.keys.GetApiKey(pb.GetApiKeyRequest(name="projects/acme/apiKeys/no-such-key"))
    after = scrape(metered)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    validations = "edgekeys_validations_total"
    assert moved(validations, verdict="VERDICT_ALLOWED") == 4  # three calls and the Check
    assert moved(validations, verdict="VERDICT_NOT_FOUND") == 2
    assert moved(validations, verdict="VERDICT_MALFORMED") == 1
    durations = "edgekeys_rpc_duration_seconds"
    assert moved(f"{durations}_count", method="ValidateApiKey") == 6
    assert moved(f"{durations}_count", method="Check") == 1
    assert moved(f"{durations}_count", method="CreateApiKey") == 1
    assert moved(f"{durations}_sum", method="CreateApiKey") > 0
    assert moved(f"{durations}_bucket", method="ValidateApiKey", le="+Inf") == 6
    assert moved("edgekeys_rpc_errors_total", method="GetApiKey", code="NOT_FOUND") == 1
    assert moved("edgekeys_store_write_seconds_count") == 1
    assert value(after, "edgekeys_index_keys") == 2
    assert value(after, "process_resident_memory_bytes") > 0


def test_projection_lag_counts_events_the_server_has_not_seen_yet(
    metered: RunningServer, clock: FakeClock, store: str
) -> None:
    metered.create()
    caught_up = scrape(metered)
    for projection in ("index", "catalog", "audit"):
        assert value(caught_up, "edgekeys_projection_lag_events", projection=projection) == 0
        assert value(caught_up, "edgekeys_projection_lag_seconds", projection=projection) == 0

    # Another process writes to the same store; this server polls once an hour (and
    # the store is SQLite: on PostgreSQL its notification would wake the server).
    elsewhere = KeyStore(store, clock)
    try:
        elsewhere.create_key("acme", "from-elsewhere", "", "", [LLAMA], None)
        elsewhere.attach_deployment(
            KeyName("acme", "from-elsewhere"), "projects/acme/deployments/mistral"
        )
    finally:
        elsewhere.close()
    time.sleep(0.05)
    behind = scrape(metered)
    for projection in ("index", "catalog", "audit"):
        assert value(behind, "edgekeys_projection_lag_events", projection=projection) == 2
        assert value(behind, "edgekeys_projection_lag_seconds", projection=projection) > 0

    metered.create()  # a write brings every projection up to the store's head
    again = scrape(metered)
    for projection in ("index", "catalog", "audit"):
        assert value(again, "edgekeys_projection_lag_events", projection=projection) == 0
        assert value(again, "edgekeys_projection_lag_seconds", projection=projection) == 0
    assert value(again, "edgekeys_index_keys") == 3
    assert value(again, "edgekeys_source_reachable") == 1


def test_a_store_replica_cut_off_from_its_store_says_so(metered: RunningServer) -> None:
    metered.create()
    with metered.store_cut_off():
        cut_off = scrape(metered)
    assert value(cut_off, "edgekeys_source_reachable") == 0
    assert not [name for name, _ in cut_off if name.startswith("edgekeys_projection_lag")]
    assert value(scrape(metered), "edgekeys_source_reachable") == 1


@pytest.mark.both_stores
def test_refused_callers_are_counted_by_reason(
    tmp_path: Path, clock: FakeClock, store: str
) -> None:
    callers_file = tmp_path / "callers.toml"
    tokens = write_callers(callers_file, {"gw": (["gateway"], ["acme"])})
    options = {"metrics_address": "127.0.0.1:0", "callers_file": str(callers_file)}
    server = RunningServer(tmp_path / "db", clock, database_url=store, options=options).start()
    try:
        request = pb.ListApiKeysRequest(parent="projects/acme")
        for metadata in ((("authorization", "Bearer ekc_unknown"),), ()):
            with pytest.raises(grpc.RpcError):
                server.keys.ListApiKeys(request, metadata=metadata)
        with pytest.raises(grpc.RpcError):  # a gateway may not manage keys
            server.keys.ListApiKeys(
                request, metadata=(("authorization", f"Bearer {tokens['gw']}"),)
            )
        samples = scrape(server)
    finally:
        server.stop()
    failed = "edgekeys_failed_auth_total"
    assert value(samples, failed, reason="CALLER_UNAUTHENTICATED") == 2
    assert value(samples, failed, reason="ROLE_NOT_ALLOWED") == 1
    errors = "edgekeys_rpc_errors_total"
    assert value(samples, errors, method="ListApiKeys", code="UNAUTHENTICATED") == 2
    assert value(samples, errors, method="ListApiKeys", code="PERMISSION_DENIED") == 1
