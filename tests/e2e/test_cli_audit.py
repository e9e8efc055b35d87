"""`edgekeys audit …` against a real server process, as an auditor runs it."""

import json
import os
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import grpc
import pytest

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from tests.e2e.conftest import BIN, ServeProcess

LLAMA = "projects/acme/deployments/llama"


@pytest.fixture(scope="module")
def served(served_per_module: ServeProcess) -> ServeProcess:
    return served_per_module


def edgekeys(served: ServeProcess, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "EDGEKEYS_SERVER": served.address}
    return subprocess.run(
        [str(BIN / "edgekeys"), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def make_history(served: ServeProcess, project: str = "acme") -> str:
    with grpc.insecure_channel(served.address) as channel:
        keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
        name: str = keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=f"projects/{project}",
                api_key=pb.ApiKey(
                    display_name="Portal",
                    deployments=[f"projects/{project}/deployments/llama"],
                ),
            )
        ).api_key.name
        keys.UpdateApiKey(pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=name, description="d")))
        keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name))
    return name


def test_history_prints_a_table_of_every_event(served: ServeProcess) -> None:
    name = make_history(served)
    result = edgekeys(served, "audit", "history", name)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["POSITION", "TIME", "(UTC)"]
    assert [line.split()[2] for line in lines[1:]] == [
        "KeyCreated",
        "DetailsChanged",
        "KeyDeleted",
    ]
    assert all(name in line for line in lines[1:])


def test_global_options_work_anywhere_and_json_is_one_object_per_event(
    served: ServeProcess,
) -> None:
    name = make_history(served)
    before = edgekeys(served, "--json", "audit", "history", name)
    after = edgekeys(served, "audit", "history", name, "--json")
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout
    events = [json.loads(line) for line in after.stdout.splitlines()]
    assert [e["event_type"] for e in events] == ["KeyCreated", "DetailsChanged", "KeyDeleted"]
    assert [int(e["version"]) for e in events] == [1, 2, 3]
    assert events[0]["key_created"]["display_name"] == "Portal"


def test_log_lists_only_the_project_and_honours_since(served: ServeProcess) -> None:
    ours = make_history(served, "acme")
    make_history(served, "other")
    result = edgekeys(served, "audit", "log", "projects/acme", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events and all(e["api_key"].startswith("projects/acme/") for e in events)
    assert ours in {e["api_key"] for e in events}
    positions = [int(e["position"]) for e in events]
    assert positions == sorted(positions)
    later = edgekeys(served, "audit", "log", "acme", "--since", "2999-01-01", "--json")
    assert later.returncode == 0 and later.stdout == ""


def test_log_follow_prints_new_events_as_they_happen(served: ServeProcess) -> None:
    environment = {**os.environ, "EDGEKEYS_SERVER": served.address}
    follower = subprocess.Popen(
        [str(BIN / "edgekeys"), "audit", "log", "followed", "--follow", "--json"],
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)  # let it reach the live part; the event must arrive either way
        name = make_history(served, "followed")
        assert follower.stdout is not None
        seen = [json.loads(follower.stdout.readline()) for _ in range(3)]
        assert [e["api_key"] for e in seen] == [name] * 3
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_verify_prints_a_checkpoint_that_a_later_verify_accepts(served: ServeProcess) -> None:
    make_history(served)
    first = edgekeys(served, "audit", "verify")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ok: ")
    checkpoint = next(
        line.split(" ", 1)[1]
        for line in first.stdout.splitlines()
        if line.startswith("checkpoint:")
    )
    again = edgekeys(served, "audit", "verify", "--checkpoint", checkpoint, "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["ok"] is True
    forged = checkpoint.split(":")[0] + ":" + "0" * 64
    refused = edgekeys(served, "audit", "verify", "--checkpoint", forged)
    assert refused.returncode == 1
    assert refused.stdout.startswith("FAILED at position")


def test_errors_are_one_line_with_a_nonzero_exit(served: ServeProcess, tmp_path: Path) -> None:
    missing = edgekeys(served, "audit", "history", "projects/acme/apiKeys/no-such-key")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "edgekeys: NOT_FOUND: projects/acme/apiKeys/no-such-key does not exist"
    ]
    assert missing.stdout == ""
    unreachable = edgekeys(served, "audit", "verify", "--server", "127.0.0.1:9")
    assert unreachable.returncode == 1
    assert len(unreachable.stderr.strip().splitlines()) == 1
    assert "cannot reach 127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in missing.stderr + unreachable.stderr


def test_verify_full_finds_what_the_default_check_after_the_checkpoint_trusts(
    tmp_path: Path,
) -> None:
    database = tmp_path / "edgekeys.db"
    own = ServeProcess(database)
    own.start()
    try:
        make_history(own)
        full = edgekeys(own, "audit", "verify", "--full")
        assert full.returncode == 0, full.stderr
        assert full.stdout.startswith("ok: 3 events verified from the first\n")
        assert own.stop() == 0
        with closing(sqlite3.connect(database)) as db:  # the KeyCreated event, position 1
            state: bytes = db.execute("SELECT state FROM stored_events WHERE rowid = 1").fetchone()[
                0
            ]
            at = state.index(b"llama")
            db.execute(
                "UPDATE stored_events SET state = ? WHERE rowid = 1",
                (state[:at] + b"F" + state[at + 1 :],),
            )
            db.commit()
        own.start()
        since = edgekeys(own, "audit", "verify")
        assert since.returncode == 0, since.stderr
        assert since.stdout.startswith(
            "ok: 0 events verified after the server's checkpoint at position 3 "
            "(--full checks every event)\n"
        )
        caught = edgekeys(own, "audit", "verify", "--full")
        assert caught.returncode == 1
        assert caught.stdout.startswith("FAILED at position 1: position 1:")
        as_json = edgekeys(own, "audit", "verify", "--full", "--json")
        assert json.loads(as_json.stdout)["first_bad_position"] == "1"
    finally:
        if own.process is not None and own.process.poll() is None:
            own.stop()
