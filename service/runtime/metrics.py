"""Prometheus metrics, served over HTTP on `--metrics-address` (off by default).

Every figure is counted whether or not it is served. What every call counts (its
duration, a verdict) is a plain tally written by one thread with no lock, about 0.2 µs
a call in all; prometheus_client's own counters, with their locks, count the rare
events (errors, refused callers). The projections' lag is measured when scraped.
"""

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edgekeys.v1 import validation_pb2 as vpb
from projections.projector import Lag

log = logging.getLogger(__name__)
# No *_created series: a start time per label set says little and doubles the output.
disable_created_metrics()  # type: ignore[no-untyped-call]

# From a cached ValidateApiKey (0.1 ms) to a slow write on a busy PostgreSQL (seconds).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


_BOUNDS = [*map(str, LATENCY_BUCKETS), "+Inf"]


class Tally:
    """A histogram of durations written by one thread (the event loop, or the
    writer's), so without a lock: a bisect and two additions. Scrapes read it as it is."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, as Prometheus has them."""
        counts = list(self.counts)  # one read: the loop may add meanwhile
        return [(bound, float(n)) for bound, n in zip(_BOUNDS, accumulate(counts), strict=True)]


class Metrics:
    """One server's figures, in a registry of its own (tests run several servers)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(standard)  # memory, CPU, open files, garbage collection
        self.verdicts = dict.fromkeys(vpb.Verdict.values(), 0)  # counted on the event loop
        self.durations: dict[str, Tally] = {}  # by method, observed on the event loop
        self.store_writes = Tally()  # observed on the writer's thread
        self._figures = _Figures(self)
        registry.register(self._figures)
        self.rpc_errors = Counter(
            "edgekeys_rpc_errors",
            "RPCs that ended with an error status, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.failed_auth = Counter(
            "edgekeys_failed_auth",
            "Callers refused: unauthenticated, lacking the role or the project, or over "
            "their limit of failed authentications, by ErrorInfo reason",
            ["reason"],
            registry=registry,
        )
        self._http: WSGIServer | None = None

    def timer(self, method: str) -> Tally:
        """The durations of `method`'s unary calls."""
        return self.durations.setdefault(method, Tally())

    def failed(self, method: str, code: str, reason: str) -> None:
        """A call ended with status `code`; `reason`, when a caller was refused."""
        self.rpc_errors.labels(method, code).inc()
        if reason:
            self.failed_auth.labels(reason).inc()

    def watch(
        self, lags: Callable[[], list[Lag]], keys: Callable[[], int], reachable: Callable[[], bool]
    ) -> None:
        """Report the projections' lag, the index's size and whether the source (the
        store, or an edge follower's upstream) is heard, measured at each scrape."""
        self._figures.sources = (lags, keys, reachable)

    def serve(self, address: str) -> int:
        """Serve /metrics on `host:port` in a thread of its own; returns the port."""
        host, _, port = address.rpartition(":")
        try:
            self._http, _ = start_http_server(int(port), host.strip("[]"), self.registry)
        except OSError as error:  # taken, or not an address of this machine
            raise RuntimeError(f"cannot serve metrics on {address}: {error.strerror}") from None
        bound: int = self._http.server_port
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class _Figures(Collector):
    """What the tallies hold, and what `watch` measures at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.sources: (
            tuple[Callable[[], list[Lag]], Callable[[], int], Callable[[], bool]] | None
        ) = None

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        verdicts = CounterMetricFamily(
            "edgekeys_validations",
            "Verdicts given by ValidateApiKey(s) and Envoy's Check, by verdict",
            labels=["verdict"],
        )
        for number, count in list(metrics.verdicts.items()):
            verdicts.add_metric([vpb.Verdict.Name(number)], count)
        durations = HistogramMetricFamily(
            "edgekeys_rpc_duration_seconds",
            "Time to answer a unary RPC, from its arrival to its reply, by method",
            labels=["method"],
        )
        for method, tally in list(metrics.durations.items()):
            durations.add_metric([method], tally.buckets(), tally.total)
        writes = HistogramMetricFamily(
            "edgekeys_store_write_seconds",
            "Time to load a key, run the change and commit its events to the store",
        )
        writes.add_metric([], metrics.store_writes.buckets(), metrics.store_writes.total)
        yield from (verdicts, durations, writes)
        if self.sources is not None:
            yield from self._measured(*self.sources)

    @staticmethod
    def _measured(
        lags: Callable[[], list[Lag]], keys: Callable[[], int], reachable: Callable[[], bool]
    ) -> Iterator[Metric]:
        events = GaugeMetricFamily(
            "edgekeys_projection_lag_events",
            "Events in the store (an edge follower: its upstream) not yet in this projection",
            labels=["projection"],
        )
        seconds = GaugeMetricFamily(
            "edgekeys_projection_lag_seconds",
            "Seconds since this projection was last caught up with the store; 0 when it "
            "is (an edge follower: seconds since its upstream last spoke)",
            labels=["projection"],
        )
        for lag in lags():  # empty while the store is unreachable
            events.add_metric([lag.projection], lag.events)
            seconds.add_metric([lag.projection], lag.seconds)
        yield events
        yield seconds
        yield GaugeMetricFamily("edgekeys_index_keys", "Keys in the validation index", value=keys())
        yield GaugeMetricFamily(
            "edgekeys_source_reachable",
            "1 while the store answers (0: validating from memory, writes refused); on an "
            "edge follower, 1 while its index is fresh (0: failing closed)",
            value=int(reachable()),
        )
