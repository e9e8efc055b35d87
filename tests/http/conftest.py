"""What the HTTP tests share: a server behind a callers file."""

from collections.abc import Callable
from pathlib import Path

import pytest

from service.security import callers
from tests.api.test_tls import callers_file
from tests.conftest import RunningServer
from tests.http.test_listener import ON


@pytest.fixture
def guarded(
    tmp_path: Path, serving: Callable[..., RunningServer]
) -> tuple[RunningServer, dict[str, str]]:
    """A server with a callers file: an admin and auditor of acme, and a gateway."""
    tokens, tables = {}, []
    for name, roles in (("portal", ["admin", "auditor"]), ("edge", ["gateway"])):
        token, digest = callers.new_token()
        tokens[name] = token
        tables.append(callers.caller_table(name, digest, roles, ["acme"], None))
    server = serving(callers_file=callers_file(tmp_path, *tables), **ON)
    return server, tokens
