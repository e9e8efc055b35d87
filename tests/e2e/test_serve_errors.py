"""`edgekeys serve` refuses settings it cannot use with one clear line and exit code 2,
never a traceback, and never with the password of the URL."""

import base64
import os
import socket
import subprocess
from pathlib import Path

import pytest

from service.domain.clock import utc_now
from service.write.keystore import KeyStore
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
        (["--address", "0.0.0.0:0"], "refusing to listen on 0.0.0.0:0 with no callers file"),
        (["--callers-file", "/nonexistent/callers.toml"], "cannot read the callers file"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "needs --tls-cert and --tls-key"),
        (["--tls-cert", "/nonexistent", "--tls-key", "/nonexistent"], "cannot read a TLS file"),
        (["--tls-cert", "README.md", "--tls-key", "README.md"], "--tls-cert: not a PEM"),
        (["--metrics-address", "9100"], "--metrics-address must be HOST:PORT"),
        (["--workers", "2", "--metrics-address", "127.0.0.1:0"], "fixed --metrics-address"),
        (["--log-format", "xml"], "--log-format must be text or json"),
        (["--http-address", "8080"], "--http-address must be HOST:PORT or off"),
        (["--workers", "2", "--http-address", "127.0.0.1:0"], "fixed --http-address"),
        (["--http-address", "0.0.0.0:8080"], "refusing to listen on 0.0.0.0:8080"),
    ],
)
def test_settings_that_cannot_be_used_are_one_clear_line(flags: list[str], expected: str) -> None:
    refused(flags, expected)


def test_a_metrics_port_already_taken_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        refused(["--metrics-address", address], f"cannot serve metrics on {address}")


def test_an_http_port_already_taken_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        refused(["--http-address", address], f"cannot serve HTTP on {address}")


def refused(flags: list[str], expected: str) -> None:
    done = subprocess.run(
        [BIN / "edgekeys", "serve", "--address", "127.0.0.1:0", "--http-address", "off", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    last = done.stderr.splitlines()[-1]  # after any warning logged on the way
    assert last.startswith("edgekeys: cannot serve: ")
    assert expected in last
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr


def test_a_store_is_served_only_with_the_key_it_was_written_with(tmp_path: Path) -> None:
    key, other = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    for name, written_with in (("encrypted", key), ("plain", "")):
        keys = KeyStore(f"sqlite:///{tmp_path / name}.db", utc_now, written_with)
        keys.create_key("acme", "", "k", "", ["projects/acme/deployments/llama"], None)
        keys.close()
    cases = [
        ("encrypted", "", "events are encrypted: give the encryption key"),
        ("encrypted", other, "do not decrypt with the encryption key given"),
        ("plain", key, "do not decrypt with the encryption key given"),
        ("plain", "c2hvcnQ=", "must be 16, 24 or 32 bytes in base64"),
    ]
    for name, given, expected in cases:
        done = subprocess.run(
            [BIN / "edgekeys", "serve", "--address", "127.0.0.1:0", "--http-address", "off"],
            env={
                **os.environ,
                "EDGEKEYS_DATABASE_URL": f"sqlite:///{tmp_path / name}.db",
                "EDGEKEYS_ENCRYPTION_KEY": given,
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (name, done.stderr)
        assert expected in done.stderr.splitlines()[-1]
        assert "Traceback" not in done.stderr
        assert all(k not in done.stderr for k in (key, other))
