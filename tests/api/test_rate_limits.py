"""Failures are limited per end client, never per gateway: one client guessing keys is
refused (VERDICT_RATE_LIMITED, 429 through Check) while every other client behind the
same gateway goes on as before. Failed caller authentications are limited per peer."""

from collections.abc import Callable
from pathlib import Path

import grpc

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from edgekeys.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from edgekeys.vendor.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from service.security import callers
from service.security.ratelimit import FailureLimiter
from tests.api.test_authz import check_request
from tests.calls import bearer
from tests.conftest import RunningServer

LLAMA = "projects/acme/deployments/llama"
ATTACKER, NEIGHBOUR = "203.0.113.7", "198.51.100.20"
NOT_A_KEY = "edk_" + "0" * 49
NEVER = {"failed_validation_rate": 0.0001, "failed_validation_burst": 3}  # no refill here


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_may_fail_its_burst_then_one_failure_per_interval() -> None:
    ticks = Ticks()
    limiter = FailureLimiter(rate=0.5, burst=3, clock=ticks)
    assert not limiter.limited("a")
    for _ in range(3):
        assert not limiter.limited("a")
        limiter.failed("a")
    assert limiter.limited("a") and not limiter.limited("b")
    ticks.now += 1.9  # 0.95 of a failure back
    assert limiter.limited("a")
    ticks.now += 0.1
    assert not limiter.limited("a")
    limiter.failed("a")
    assert limiter.limited("a")
    ticks.now += 3600  # the bucket fills up to its burst, no further
    for _ in range(3):
        limiter.failed("a")
    assert limiter.limited("a")


def test_memory_stays_bounded_under_an_attacker_rotating_addresses() -> None:
    limiter = FailureLimiter(rate=1, burst=1, clock=Ticks(), capacity=1000)
    limiter.failed("steady")
    for i in range(5000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 1000
    assert not limiter.limited("steady")  # forgotten: the oldest failure went first
    assert limiter.limited("10.0.19.135")  # the latest are kept


def verdict(server: RunningServer, secret: str, client: str = "") -> "vpb.Verdict":
    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA, client_address=client)
    found: vpb.Verdict = server.validation.ValidateApiKey(request).verdict
    return found


def test_a_guessing_client_is_refused_and_its_neighbours_are_not(
    serving: Callable[..., RunningServer],
) -> None:
    server = serving(**NEVER)
    attacker_key, neighbour_key = server.create().secret, server.create().secret
    guesses = [verdict(server, NOT_A_KEY, ATTACKER) for _ in range(3)]
    assert guesses == [vpb.VERDICT_MALFORMED] * 3
    # over the limit, even a valid key is refused: guessing must not pay off
    assert verdict(server, attacker_key, ATTACKER) == vpb.VERDICT_RATE_LIMITED
    assert verdict(server, NOT_A_KEY, ATTACKER) == vpb.VERDICT_RATE_LIMITED
    # the same gateway, the same connection: another client, and requests naming none
    assert verdict(server, neighbour_key, NEIGHBOUR) == vpb.VERDICT_ALLOWED
    assert verdict(server, attacker_key) == vpb.VERDICT_ALLOWED
    assert [verdict(server, NOT_A_KEY) for _ in range(5)] == [vpb.VERDICT_MALFORMED] * 5
    batch = server.validation.ValidateApiKeys(
        vpb.ValidateApiKeysRequest(
            requests=[
                vpb.ValidateApiKeyRequest(
                    secret=attacker_key, deployment=LLAMA, client_address=ATTACKER
                ),
                vpb.ValidateApiKeyRequest(
                    secret=neighbour_key, deployment=LLAMA, client_address=NEIGHBOUR
                ),
            ]
        )
    )
    assert [r.verdict for r in batch.responses] == [
        vpb.VERDICT_RATE_LIMITED,
        vpb.VERDICT_ALLOWED,
    ]


def test_every_kind_of_denial_counts_and_allowed_requests_do_not(
    serving: Callable[..., RunningServer],
) -> None:
    server = serving(**NEVER)
    live = server.create().secret
    for _ in range(10):
        assert verdict(server, live, ATTACKER) == vpb.VERDICT_ALLOWED
    assert verdict(server, NOT_A_KEY, ATTACKER) == vpb.VERDICT_MALFORMED
    deleted = server.create()
    server.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=deleted.api_key.name))
    assert verdict(server, deleted.secret, ATTACKER) == vpb.VERDICT_NOT_FOUND
    elsewhere = vpb.ValidateApiKeyRequest(
        secret=live, deployment="projects/acme/deployments/other", client_address=ATTACKER
    )
    assert server.validation.ValidateApiKey(elsewhere).verdict == (
        vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED
    )
    assert verdict(server, live, ATTACKER) == vpb.VERDICT_RATE_LIMITED


def check(server: RunningServer, secret: str, source: str) -> int:
    return int(checked(server, secret, source).denied_response.status.code or 200)


def checked(server: RunningServer, secret: str, source: str) -> CheckResponse:
    request = check_request({"x-api-key": secret}, source=source)
    reply: CheckResponse = external_auth_pb2_grpc.AuthorizationStub(server.channel).Check(request)
    return reply


def test_check_answers_429_to_a_guessing_source_address(
    serving: Callable[..., RunningServer],
) -> None:
    server = serving(**NEVER)
    live = server.create().secret
    assert [check(server, NOT_A_KEY, ATTACKER) for _ in range(4)] == [401, 401, 401, 429]
    assert check(server, live, ATTACKER) == 429
    assert check(server, live, NEIGHBOUR) == 200


def test_a_429_says_when_to_retry(serving: Callable[..., RunningServer]) -> None:
    server = serving(failed_validation_rate=0.5, failed_validation_burst=2)
    for _ in range(2):
        checked(server, NOT_A_KEY, ATTACKER)
    refused = checked(server, NOT_A_KEY, ATTACKER).denied_response
    assert refused.status.code == 429
    headers = {h.header.key: h.header.value for h in refused.headers}
    assert 1 <= int(headers["retry-after"]) <= 2  # one failure back every 2 s
    assert headers["content-type"] == "application/json"
    never = serving(**NEVER)  # 0.0001 a second: back in 10,000 s
    for _ in range(4):
        denied = checked(never, NOT_A_KEY, ATTACKER).denied_response
    retry = {h.header.key: h.header.value for h in denied.headers}["retry-after"]
    assert 9_990 <= int(retry) <= 10_000


def test_a_rate_of_zero_turns_the_limit_off(serving: Callable[..., RunningServer]) -> None:
    server = serving(failed_validation_rate=0.0, failed_validation_burst=1)
    live = server.create().secret
    assert {verdict(server, NOT_A_KEY, ATTACKER) for _ in range(20)} == {vpb.VERDICT_MALFORMED}
    assert verdict(server, live, ATTACKER) == vpb.VERDICT_ALLOWED


def test_failed_caller_authentication_is_limited_per_peer(
    tmp_path: Path, serving: Callable[..., RunningServer]
) -> None:
    token, digest = callers.new_token()
    path = tmp_path / "callers.toml"
    path.write_text(callers.caller_table("gateway", digest, ["gateway"], ["*"], None))
    server = serving(callers_file=str(path), failed_auth_rate=0.0001, failed_auth_burst=3)
    request = vpb.ValidateApiKeyRequest(secret=NOT_A_KEY, deployment=LLAMA)
    codes = []
    for _ in range(5):
        try:
            server.validation.ValidateApiKey(request, metadata=bearer("ekc_wrong"))
        except grpc.RpcError as error:
            codes.append(error.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    # a caller that does know its token is let in from the same address
    reply = server.validation.ValidateApiKey(request, metadata=bearer(token))
    assert reply.verdict == vpb.VERDICT_MALFORMED
