"""projections/catalog.py: the SQL read model behind ListApiKeys, exactly-once."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import catalog as catalog_module
from projections.catalog import Catalog, KeyRecord
from service.domain import keyformat
from service.domain.api_key import ApiKey
from service.domain.names import KeyName

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
PAGE = 100

Batch = list[tuple[int, ApiKey.Event]]


class Log:
    """Numbers the events keys record the way the store would: 1, 2, 3, …"""

    def __init__(self) -> None:
        self.position = 0

    def take(self, *keys: ApiKey) -> Batch:
        batch: Batch = []
        for key in keys:
            for event in key.collect_events():
                assert isinstance(event, ApiKey.Event)
                self.position += 1
                batch.append((self.position, event))
        return batch


def new_key(
    key_id: str,
    deployments: tuple[str, ...] = (LLAMA,),
    project: str = "acme",
    expire_time: datetime | None = None,
) -> ApiKey:
    secret = keyformat.new_secret()
    return ApiKey.create(
        KeyName(project, key_id),
        f"name of {key_id}",
        f"about {key_id}",
        list(deployments),
        expire_time,
        secret_sha256=keyformat.digest(secret).hex(),
        secret_hint=keyformat.hint(secret),
        actor="alice",
        request_id="",
        now=NOW,
    )


def renamed_keys(*key_ids: str) -> list[ApiKey]:
    """New keys, each renamed once: a batch of creations and changes, interleaved."""
    keys = [new_key(key_id) for key_id in key_ids]
    for key in keys:
        key.change_details("renamed", None, **later(1))
    return keys


def later(minutes: int) -> dict[str, Any]:
    return {"actor": "bob", "request_id": "", "now": NOW + timedelta(minutes=minutes)}


def names(records: list[KeyRecord]) -> list[str]:
    return [record.name for record in records]


def all_of(catalog: Catalog, project: str = "acme", **filters: Any) -> list[KeyRecord]:
    return catalog.list(project, after=0, limit=PAGE, **filters)


def row_counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        keys = conn.execute(sa.select(sa.func.count()).select_from(catalog_module.keys))
        links = conn.execute(sa.select(sa.func.count()).select_from(catalog_module.key_deployments))
        return keys.scalar_one(), links.scalar_one()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def catalog(engine: Engine) -> Catalog:
    return Catalog(engine)


@pytest.fixture
def log() -> Log:
    return Log()


def test_a_new_catalog_is_empty_at_position_zero(catalog: Catalog) -> None:
    assert catalog.position == 0
    assert all_of(catalog, show_deleted=True) == []


def test_process_applies_created_keys_and_moves_the_position(catalog: Catalog, log: Log) -> None:
    key = new_key("key-one", (LLAMA, MISTRAL), expire_time=NOW + timedelta(days=30))

    catalog.process(log.take(key))

    assert catalog.position == 1
    [record] = all_of(catalog)
    assert record == KeyRecord(
        name="projects/acme/apiKeys/key-one",
        display_name="name of key-one",
        description="about key-one",
        deployments=[LLAMA, MISTRAL],
        expire_time=NOW + timedelta(days=30),
        created_on=NOW,
        modified_on=NOW,
        delete_time=None,
        purge_time=None,
        secret_hint=key.secret_hint,
        version=1,
        position=1,
        previous_secret_until=None,
        last_use_time=None,
    )


def test_process_applies_every_kind_of_change(catalog: Catalog, log: Log) -> None:
    key = new_key("key-one", (LLAMA,))
    catalog.process(log.take(key))
    key.change_details("renamed", None, **later(1))
    key.change_expiry(NOW + timedelta(days=7), **later(2))
    key.attach(MISTRAL, **later(3))
    key.detach(LLAMA, **later(4))

    catalog.process(log.take(key))

    assert catalog.position == 5
    [record] = all_of(catalog)
    assert record.display_name == "renamed"
    assert record.description == "about key-one"
    assert record.expire_time == NOW + timedelta(days=7)
    assert record.deployments == [MISTRAL]
    assert record.version == 5
    assert record.modified_on == NOW + timedelta(minutes=4)
    assert record.created_on == NOW
    assert record.position == 1  # a key's place in the list is where it was created


def test_a_deleted_key_keeps_its_row_with_a_delete_time(catalog: Catalog, log: Log) -> None:
    key = new_key("key-one")
    key.delete(**later(5))

    catalog.process(log.take(key))

    [record] = all_of(catalog, show_deleted=True)
    assert record.delete_time == NOW + timedelta(minutes=5)
    assert record.purge_time is None
    assert record.display_name == "name of key-one"
    assert record.version == 2


def test_a_purge_blanks_the_name_and_description_and_sets_purge_time(
    catalog: Catalog, log: Log
) -> None:
    key = new_key("key-one", (LLAMA, MISTRAL))
    key.change_details("renamed", "new words", **later(1))
    key.delete(**later(5))
    catalog.process(log.take(key))
    [before] = all_of(catalog, show_deleted=True)
    key.purge_personal_data(**later(9))

    catalog.process(log.take(key))

    [record] = all_of(catalog, show_deleted=True)
    assert (record.display_name, record.description) == ("", "")
    assert record.purge_time == NOW + timedelta(minutes=9)
    assert record.modified_on == NOW + timedelta(minutes=9)
    assert record.version == 4
    assert catalog.position == 4
    # Everything but the personal data stays as it was.
    assert record.delete_time == before.delete_time == NOW + timedelta(minutes=5)
    assert (record.name, record.deployments, record.secret_hint, record.position) == (
        before.name,
        before.deployments,
        before.secret_hint,
        before.position,
    )
    assert all_of(catalog) == []
    assert names(all_of(catalog, deployment=LLAMA, show_deleted=True)) == [record.name]


def test_a_purge_in_the_same_batch_as_the_creation_leaves_no_words_behind(
    catalog: Catalog, log: Log
) -> None:
    key = new_key("key-one")
    key.delete(**later(1))
    key.purge_personal_data(**later(2))

    catalog.process(log.take(key, new_key("key-two")))

    assert [
        (r.name, r.display_name, r.description) for r in all_of(catalog, show_deleted=True)
    ] == [
        ("projects/acme/apiKeys/key-one", "", ""),
        ("projects/acme/apiKeys/key-two", "name of key-two", "about key-two"),
    ]


def test_a_catalog_reopened_on_the_same_database_resumes_its_position(
    engine: Engine, catalog: Catalog, log: Log
) -> None:
    catalog.process(log.take(new_key("key-one"), new_key("key-two")))

    reopened = Catalog(engine)

    assert reopened.position == 2
    assert names(all_of(reopened)) == names(all_of(catalog))


def test_processing_the_same_batch_again_changes_nothing(
    engine: Engine, catalog: Catalog, log: Log
) -> None:
    key = new_key("key-one", (LLAMA,))
    catalog.process(log.take(key))
    key.attach(MISTRAL, **later(1))
    key.change_details("renamed", None, **later(2))
    batch = log.take(key)
    catalog.process(batch)
    before = (all_of(catalog), catalog.position, row_counts(engine))

    catalog.process(batch)

    assert (all_of(catalog), catalog.position, row_counts(engine)) == before
    assert all_of(catalog)[0].deployments == [LLAMA, MISTRAL]


def test_processing_everything_from_the_start_again_changes_nothing(
    engine: Engine, catalog: Catalog, log: Log
) -> None:
    key = new_key("key-one", (LLAMA,))
    history = log.take(key, new_key("key-two"))
    key.attach(MISTRAL, **later(1))
    history += log.take(key)
    catalog.process(history)
    before = (all_of(catalog), catalog.position, row_counts(engine))

    catalog.process(history)  # would break the unique name, or attach twice, if re-applied

    assert (all_of(catalog), catalog.position, row_counts(engine)) == before


def test_an_overlapping_batch_applies_only_what_is_beyond_the_position(
    catalog: Catalog, log: Log
) -> None:
    key = new_key("key-one", (LLAMA,))
    first = log.take(key)
    key.attach(MISTRAL, **later(1))
    second = log.take(key)
    key.attach("projects/acme/deployments/gemma", **later(2))
    third = log.take(key)
    catalog.process(first + second)

    catalog.process(first + second + third)

    assert catalog.position == 3
    assert all_of(catalog)[0].deployments == [LLAMA, MISTRAL, "projects/acme/deployments/gemma"]


def test_an_empty_batch_keeps_the_position(catalog: Catalog, log: Log) -> None:
    catalog.process(log.take(new_key("key-one")))

    catalog.process([])

    assert catalog.position == 1


@contextmanager
def failing(engine: Engine, statement: str) -> Iterator[list[str]]:
    """Every SQL statement that starts with `statement` fails, as if the database went
    away then; yields the statements run meanwhile."""
    run: list[str] = []

    def execute(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        run.append(sql)
        if sql.startswith(statement):
            raise RuntimeError("the database went away")

    sa.event.listen(engine, "before_cursor_execute", execute)
    try:
        yield run
    finally:
        sa.event.remove(engine, "before_cursor_execute", execute)


def test_a_batch_failing_midway_leaves_no_rows_and_no_position(
    engine: Engine, catalog: Catalog, log: Log
) -> None:
    zero = new_key("key-zero")
    catalog.process(log.take(zero))
    before = (all_of(catalog), row_counts(engine))
    batch = log.take(*renamed_keys("key-one", "key-two"))  # created 2, 4; renamed 3, 5
    zero.detach(LLAMA, **later(2))
    batch += log.take(zero)  # and a change of a key stored before

    with failing(engine, "UPDATE catalog_tracking") as run, pytest.raises(RuntimeError):
        catalog.process(batch)

    assert any(sql.startswith("INSERT INTO catalog_api_keys ") for sql in run)
    assert any(sql.startswith("UPDATE catalog_api_keys ") for sql in run)
    assert catalog.position == 1
    assert (all_of(catalog), row_counts(engine)) == before


def test_a_failed_batch_is_applied_whole_when_retried(
    engine: Engine, catalog: Catalog, log: Log
) -> None:
    batch = log.take(*renamed_keys("key-one", "key-two"))
    with failing(engine, "INSERT INTO catalog_api_key_deployments"), pytest.raises(RuntimeError):
        catalog.process(batch)

    catalog.process(batch)

    assert catalog.position == 4
    assert [r.display_name for r in all_of(catalog)] == ["renamed", "renamed"]
    assert names(all_of(catalog)) == [
        "projects/acme/apiKeys/key-one",
        "projects/acme/apiKeys/key-two",
    ]


def test_list_shows_only_the_keys_of_the_project(catalog: Catalog, log: Log) -> None:
    catalog.process(
        log.take(
            new_key("key-one"),
            new_key("key-two", ("projects/other/deployments/llama",), project="other"),
            new_key("key-three"),
        )
    )

    assert names(all_of(catalog, "acme")) == [
        "projects/acme/apiKeys/key-one",
        "projects/acme/apiKeys/key-three",
    ]
    assert names(all_of(catalog, "other")) == ["projects/other/apiKeys/key-two"]
    assert all_of(catalog, "nobody") == []


def test_list_filters_by_deployment(catalog: Catalog, log: Log) -> None:
    both = new_key("key-both", (LLAMA, MISTRAL))
    catalog.process(
        log.take(new_key("key-llama", (LLAMA,)), new_key("key-mistral", (MISTRAL,)), both)
    )

    assert names(all_of(catalog, deployment=LLAMA)) == [
        "projects/acme/apiKeys/key-llama",
        "projects/acme/apiKeys/key-both",
    ]
    assert names(all_of(catalog, deployment=MISTRAL)) == [
        "projects/acme/apiKeys/key-mistral",
        "projects/acme/apiKeys/key-both",
    ]
    assert all_of(catalog, deployment="projects/acme/deployments/gemma") == []


def test_the_deployment_filter_follows_attach_and_detach(catalog: Catalog, log: Log) -> None:
    key = new_key("key-one", (LLAMA,))
    catalog.process(log.take(key))

    key.attach(MISTRAL, **later(1))
    key.detach(LLAMA, **later(2))
    catalog.process(log.take(key))

    assert all_of(catalog, deployment=LLAMA) == []
    assert names(all_of(catalog, deployment=MISTRAL)) == ["projects/acme/apiKeys/key-one"]


def test_list_hides_deleted_keys_unless_asked(catalog: Catalog, log: Log) -> None:
    gone = new_key("key-gone")
    catalog.process(log.take(new_key("key-live"), gone))
    gone.delete(**later(1))
    catalog.process(log.take(gone))

    assert names(all_of(catalog)) == ["projects/acme/apiKeys/key-live"]
    assert names(all_of(catalog, deployment=LLAMA)) == ["projects/acme/apiKeys/key-live"]
    assert names(all_of(catalog, show_deleted=True)) == [
        "projects/acme/apiKeys/key-live",
        "projects/acme/apiKeys/key-gone",
    ]


def pages_of(catalog: Catalog, limit: int, most: int = 10) -> list[list[KeyRecord]]:
    """Every page of project acme, each starting after the last one's position;
    stops after `most` pages so a cursor that never advances fails instead of hanging."""
    pages: list[list[KeyRecord]] = []
    after = 0
    while (page := catalog.list("acme", after=after, limit=limit)) and len(pages) < most:
        pages.append(page)
        after = page[-1].position
    return pages


def test_list_pages_by_position(catalog: Catalog, log: Log) -> None:
    key_ids = [f"key-{n:02d}" for n in range(5)]
    first = new_key(key_ids[0])
    catalog.process(log.take(first, *(new_key(key_id) for key_id in key_ids[1:])))
    first.change_details("renamed", None, **later(1))  # a later change does not move it
    catalog.process(log.take(first))

    pages = [[record.name.rsplit("/", 1)[1] for record in page] for page in pages_of(catalog, 2)]

    assert pages == [key_ids[0:2], key_ids[2:4], key_ids[4:5]]


def test_paging_skips_other_projects_and_deleted_keys_without_losing_any(
    catalog: Catalog, log: Log
) -> None:
    keys = [
        new_key(f"key-{n:02d}", ("projects/other/deployments/llama",), project="other")
        if n % 3 == 0
        else new_key(f"key-{n:02d}")
        for n in range(10)
    ]
    catalog.process(log.take(*keys))
    keys[4].delete(**later(1))
    catalog.process(log.take(keys[4]))

    pages = pages_of(catalog, 3)

    assert all(len(page) <= 3 for page in pages)
    assert [name for page in pages for name in names(page)] == [
        str(KeyName("acme", f"key-{n:02d}")) for n in (1, 2, 5, 7, 8)
    ]


def test_count_and_skip_agree_with_the_pages_of_list(catalog: Catalog, log: Log) -> None:
    kept = [new_key(f"key-{n:02d}") for n in range(5)]
    gone, other = new_key("key-gone"), new_key("key-else", (), project="globex")
    catalog.process(log.take(*kept, gone, other))
    gone.delete(**later(1))
    catalog.process(log.take(gone))

    assert catalog.count("acme") == 5
    assert catalog.count("acme", show_deleted=True) == 6
    assert catalog.count("acme", deployment=MISTRAL) == 0
    skipped = catalog.list("acme", after=0, limit=2, skip=3)
    assert names(skipped) == names(all_of(catalog))[3:5]


def test_an_existing_catalog_gets_the_live_keys_index_without_a_rebuild(
    engine: Engine, catalog: Catalog, log: Log
) -> None:
    catalog.process(log.take(new_key("key-01")))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX catalog_api_keys_live")  # as a v4 catalog had it

    reopened = Catalog(engine)

    assert "catalog_api_keys_live" in {
        i["name"] for i in sa.inspect(engine).get_indexes("catalog_api_keys")
    }
    assert (reopened.position, names(all_of(reopened))) == (1, ["projects/acme/apiKeys/key-01"])
