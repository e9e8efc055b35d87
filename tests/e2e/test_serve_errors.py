"""`edgekeys serve` refuses settings it cannot use with one clear line and exit code 2,
never a traceback, and never with the password of the URL."""

import subprocess

import pytest

from tests.e2e.conftest import BIN, ROOT, free_port


def store(url: str) -> list[str]:
    return ["--database-url", url]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (store("mysql://root@127.0.0.1/keys"), "unsupported database URL"),
        (store("postgresql://127.0.0.1:5432/keys"), "needs a user and a database"),
        (store("sqlite:///"), "sqlite URL has no file"),
        (store("postgresql://u@127.0.0.1/keys?sslmode=require"), "PGSSLMODE"),
        (
            store(f"postgresql://edgekeys:hunter2@127.0.0.1:{free_port()}/keys"),
            "the database is unreachable",
        ),
        (["--follow", "nowhere"], "--follow must be HOST:PORT"),
        (["--follow", "127.0.0.1:99999"], "--follow must be HOST:PORT"),
        (["--follow", f"127.0.0.1:{free_port()}", "--max-staleness", "0"], "must be positive"),
    ],
)
def test_settings_that_cannot_be_used_are_one_clear_line(flags: list[str], expected: str) -> None:
    done = subprocess.run(
        [BIN / "edgekeys", "serve", "--address", "127.0.0.1:0", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("edgekeys: cannot serve: ")
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr
