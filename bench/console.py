"""`make bench-console`: the console's cost. (1) Server time of the API keys page of a
project with 1,000 keys (the `Server-Timing` header each console response carries):
the first page (50 rows) and all 1,000 on one page. (2) The gRPC hot path while a
headless browser walks the console: ValidateApiKey / Health.Check req/s, without and
with the browser, in interleaved rounds (target ≥ 0.85 in both).
"""

import argparse
import http.client
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from bench.run import HEALTH, LLAMA, VALIDATE, create_key, grpc_frame, h2load, machine, percentile
from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from tests.console.conftest import ARGS, CHROMIUM
from tests.e2e.conftest import ServeProcess

KEYS = 1000


def server_times(port: int, path: str, requests: int) -> list[float]:
    """Milliseconds the server took for each GET of `path` (Server-Timing)."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("GET", "/console/")
    first = connection.getresponse()
    first.read()
    cookie = (first.getheader("set-cookie") or "").split(";")[0]
    times = []
    for _ in range(requests):
        connection.request("GET", path, headers={"cookie": cookie})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200 and b"API keys" in body, response.status
        timing = re.search(r"dur=([\d.]+)", response.getheader("server-timing") or "")
        assert timing
        times.append(float(timing[1]))
    connection.close()
    return times


def browse(base: str, stop: threading.Event, pages: list[int]) -> None:
    """A person at the console, as fast as the browser goes: list, a key, its tabs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_context(base_url=base).new_page()
        while not stop.is_set():
            page.goto("/console/projects/acme/apiKeys")
            page.get_by_role("link", name="bench").first.click()
            for tab in ("Inference instances", "Expiration", "History", "General"):
                page.get_by_role("link", name=tab, exact=True).click()
            pages[0] += 6
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=50)
    options = parser.parse_args()
    if shutil.which("h2load") is None or not CHROMIUM.exists():
        print("bench: needs h2load (nghttp2-client) and /usr/bin/chromium")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="edgekeys-bench-console-"))
    server = ServeProcess(workdir / "console.db")
    server.start()
    try:
        _, secret = create_key(server.address)
        with grpc.insecure_channel(server.address) as channel:
            keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
            for n in range(KEYS - 1):
                keys.CreateApiKey(
                    pb.CreateApiKeyRequest(
                        parent="projects/acme",
                        api_key=pb.ApiKey(display_name=f"key {n}", deployments=[LLAMA]),
                    )
                )
        print(f"server time of the API keys page, {KEYS:,} keys", file=sys.stderr)
        first = server_times(server.http_port, "/console/projects/acme/apiKeys", options.requests)
        whole = server_times(
            server.http_port, "/console/projects/acme/apiKeys?page_size=1000", options.requests
        )
        files = {
            "health": workdir / "health.bin",
            "validate": workdir / "validate.bin",
        }
        files["health"].write_bytes(grpc_frame(health_pb2.HealthCheckRequest()))
        files["validate"].write_bytes(
            grpc_frame(vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA))
        )
        ratios: dict[str, list[float]] = {"alone": [], "with a browser": []}
        pages = [0]
        for round_number in range(options.rounds):
            for condition in ratios:
                stop = threading.Event()
                walker = None
                if condition == "with a browser":
                    base = f"http://127.0.0.1:{server.http_port}"
                    walker = threading.Thread(target=browse, args=(base, stop, pages))
                    walker.start()
                    loaded = pages[0]
                    while pages[0] == loaded and walker.is_alive():  # the browser at work
                        time.sleep(0.1)
                # health, validate, health: both under the same load, however it drifts
                before = h2load(server.address, HEALTH, files["health"], options.seconds)
                validate = h2load(server.address, VALIDATE, files["validate"], options.seconds)
                after = h2load(server.address, HEALTH, files["health"], options.seconds)
                health = (before + after) / 2
                stop.set()
                if walker:
                    walker.join(60)
                ratios[condition].append(validate / health)
                print(
                    f"  round {round_number + 1} {condition}: Health {health:,.0f}/s, "
                    f"ValidateApiKey {validate:,.0f}/s",
                    file=sys.stderr,
                )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nedgekeys console bench: {machine()}")
    for label, times in (("first page (50 rows)", first), ("all 1,000 rows", whole)):
        print(
            f"API keys page, {label:<22} server time median {statistics.median(times):6.1f} ms"
            f"  p95 {percentile(times, 0.95):6.1f} ms  (target < 100 ms)"
        )
    for condition, values in ratios.items():
        ratio = statistics.median(values)
        verdict = "ok" if ratio >= 0.85 else "BELOW"
        print(f"ValidateApiKey / Health.Check, {condition:<16} {ratio:5.2f}  (≥ 0.85) {verdict}")
    print(f"pages the browser loaded meanwhile: {pages[0]:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
