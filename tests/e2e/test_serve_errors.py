"""`edgekeys serve` refuses a store it cannot use with one clear line and exit code 2,
never a traceback, and never with the password of the URL."""

import subprocess

import pytest

from tests.e2e.conftest import BIN, ROOT, free_port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://root@127.0.0.1/keys", "unsupported database URL"),
        ("postgresql://127.0.0.1:5432/keys", "needs a user and a database"),
        ("sqlite:///", "sqlite URL has no file"),
        (
            f"postgresql://edgekeys:hunter2@127.0.0.1:{free_port()}/keys",
            "the database is unreachable",
        ),
    ],
)
def test_a_store_that_cannot_be_used_is_one_clear_line(url: str, expected: str) -> None:
    done = subprocess.run(
        [BIN / "edgekeys", "serve", "--address", "127.0.0.1:0", "--database-url", url],
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
