"""Every `edgekeys serve` flag has an EDGEKEYS_* variable; the flag wins, and a variable
set to nothing counts as unset (`EDGEKEYS_LOG_FORMAT= make run` is the default)."""

import argparse

import pytest

from service.runtime import config


def settings(*flags: str) -> config.Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_arguments(parser.parse_args(list(flags)))


def test_variables_set_what_flags_do_not_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKEYS_METRICS_ADDRESS", "127.0.0.1:9100")
    monkeypatch.setenv("EDGEKEYS_LOG_FORMAT", "json")
    monkeypatch.setenv("EDGEKEYS_POLL_INTERVAL", "0.5")
    chosen = settings("--log-format", "text")
    assert (chosen.metrics_address, chosen.log_format, chosen.poll_interval) == (
        "127.0.0.1:9100",
        "text",
        0.5,
    )


def test_an_empty_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOG_FORMAT", "ADDRESS", "POLL_INTERVAL", "WORKERS", "METRICS_ADDRESS"):
        monkeypatch.setenv(f"EDGEKEYS_{name}", "")
    assert settings() == config.Settings()
