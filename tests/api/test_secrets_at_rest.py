"""The secret is returned once and stored nowhere: not in the database files (WAL
included), not in any stored event, in no encoding."""

import base64
import sqlite3

from edgekeys.v1 import api_keys_pb2 as pb
from service.domain import keyformat
from tests.conftest import RunningServer


def encodings(secret: str) -> list[bytes]:
    """The secret raw, in hex and in base64 at each of the three byte alignments a
    longer base64 text could hold it at (only the characters that alignment fixes)."""
    raw = secret.encode()
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * pad + raw)
            forms.append(text[4 if pad else 0 : -4])  # drop the characters the neighbours change
    return forms


def test_secrets_appear_in_no_database_file_and_no_stored_event(running: RunningServer) -> None:
    secrets = [running.create(display_name=f"key {i}").secret for i in range(5)]
    # Edit one so that later events exist too, then list to drive the catalog.
    first = running.keys.ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme")).api_keys[0]
    running.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=first.name, description="rotated soon"))
    )

    files = sorted(running.database.parent.glob(running.database.name + "*"))
    assert {f.name for f in files} >= {"edgekeys.db", "edgekeys.db-wal"}
    contents = b"".join(f.read_bytes() for f in files)
    with sqlite3.connect(running.database) as db:
        events = [state for (state,) in db.execute("SELECT state FROM stored_events")]
    assert len(events) == 6

    for secret in secrets:
        # The scan does see what is stored: the digest that stands in for the secret.
        assert keyformat.digest(secret).hex().encode() in contents
        for form in encodings(secret):
            assert form not in contents
            assert not any(form in state for state in events)
