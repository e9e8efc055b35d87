"""Callers with a real `edgekeys serve`: the README's `callers add`, and SIGHUP."""

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from service.security import callers
from tests.calls import bearer
from tests.e2e.conftest import BIN, ROOT, ServeProcess
from tests.waiting import eventually


def test_sighup_reloads_the_callers_file(tmp_path: Path) -> None:
    old, old_digest = callers.new_token()
    new, new_digest = callers.new_token()
    path = tmp_path / "callers.toml"
    path.write_text(callers.caller_table("portal", old_digest, ["admin"], ["*"], None))
    served = ServeProcess(tmp_path / "edgekeys.db", callers_file=str(path))
    served.start()
    assert served.process is not None
    try:
        with grpc.insecure_channel(served.address) as channel:
            keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)

            def answer(token: str) -> str:
                try:
                    keys.ListApiKeys(
                        pb.ListApiKeysRequest(parent="projects/acme"),
                        metadata=[("authorization", f"Bearer {token}")],
                        timeout=5,
                    )
                except grpc.RpcError as error:
                    return str(error.code().name)
                return "OK"

            assert (answer(old), answer(new)) == ("OK", "UNAUTHENTICATED")
            # The same size, inode and modification time: only SIGHUP can tell.
            before = path.stat()
            path.write_text(path.read_text().replace(old_digest, new_digest))
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            time.sleep(2.5)  # over two turns of the file watcher
            assert answer(new) == "UNAUTHENTICATED"
            served.process.send_signal(signal.SIGHUP)
            eventually(lambda: (answer(old), answer(new)), ("UNAUTHENTICATED", "OK"))
    finally:
        assert served.stop() == 0


def test_the_readme_callers_add_command_makes_a_caller_the_server_admits(
    tmp_path: Path,
) -> None:
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if " callers add " in line)
    command = command.replace(".venv/bin/", f"{BIN}/")
    done = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert "shown once" in done.stderr and token not in done.stderr
    path = tmp_path / "var" / "callers.toml"
    assert token not in path.read_text()
    served = ServeProcess(tmp_path / "edgekeys.db", callers_file=str(path))
    served.start()
    try:
        curl = next(line for line in readme.splitlines() if '-H "authorization' in line)
        assert "$EDGEKEYS_TOKEN" in curl
        with grpc.insecure_channel(served.address) as channel:
            listed = api_keys_pb2_grpc.ApiKeyServiceStub(channel).ListApiKeys(
                pb.ListApiKeysRequest(parent="projects/acme"), metadata=bearer(token), timeout=5
            )
        assert list(listed.api_keys) == []
    finally:
        assert served.stop() == 0
