"""`python -m bench.fold`: how fast a first start folds an existing store (issue 19,
item 4: ≥ 20,000 events/s until the index, the catalog and the audit log are complete).

Seeds a SQLite store in bulk (bench.scale's seeding: KeyCreated, DeploymentAttached,
then DetailsChanged or ExpiryChanged), then times a fresh projector's catch-up over it,
in process, beside the store's bare replay (every page read and decoded, nothing
applied) measured in the same run.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.run import machine
from bench.scale import EVENTS_PER_KEY, seed
from projections.audit_log import AuditLog
from projections.catalog import Catalog
from projections.index import ValidationIndex
from projections.projector import BATCH
from service.domain.clock import utc_now
from service.write.keystore import KeyStore

TARGET = 20_000  # events/s


def replay(store: KeyStore) -> float:
    """Seconds to read and decode every stored event, a page at a time."""
    start, position = time.perf_counter(), 0
    while rows := store.recorder.select_notifications(
        start=position, limit=BATCH, inclusive_of_start=False
    ):
        store.data_keys.load({row.originator_id for row in rows})  # type: ignore[misc]
        for row in rows:
            store.mapper.to_domain_event(row)
        position = rows[-1].id
    return time.perf_counter() - start


def fold(store: KeyStore) -> float:
    """Seconds a new projector takes to bring all three read models to the head."""
    catalog = Catalog(store.engine, store.sealer("catalog"))
    projector = store.projector(
        ValidationIndex(), catalog, AuditLog(store.engine, store.events_table)
    )
    start = time.perf_counter()
    projector.load_index()
    projector.catch_up()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=20_000)
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edgekeys-bench-fold-"))
    events = options.keys * EVENTS_PER_KEY
    try:
        url = f"sqlite:///{workdir / 'fold.db'}"
        seeded, _ = seed(KeyStore(url, utc_now), options.keys, 1000)
        replayed = replay(KeyStore(url, utc_now))  # a fresh process's caches, as at start
        folded = fold(KeyStore(url, utc_now))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nedgekeys fold bench: {machine()}, SQLite, {events:,} events")
    print(f"seeding in bulk              {events / seeded:10,.0f} events/s")
    print(f"bare replay (read + decode)  {events / replayed:10,.0f} events/s")
    rate = events / folded
    verdict = "ok" if rate >= TARGET else "BELOW"
    print(
        f"first start: index, catalog and audit log  {rate:10,.0f} events/s "
        f"({rate * replayed / events:.2f}× the bare replay; target ≥ {TARGET:,}/s) {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
