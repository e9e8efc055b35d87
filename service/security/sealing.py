"""Encryption at rest: `EDGEKEYS_ENCRYPTION_KEY` (16, 24 or 32 bytes, base64).

The event store encrypts every event and snapshot with it (the library's AES-GCM
cipher). What edgekeys keeps beside the store is sealed with keys derived from it, one
per purpose (HKDF-SHA256): the catalog's display names and descriptions, and the
per-key data keys of crypto-shredding. `Aead` is the one AES-GCM wrapper: sealers and
the personal data under each key's data key (service.security.personal_data) use it.
"""

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENV = "EDGEKEYS_ENCRYPTION_KEY"
_NONCE = 12


def parse_key(text: str, name: str = ENV) -> bytes:
    """The key's bytes; ValueError naming `name` when it is not 16, 24 or 32 in base64."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) not in (16, 24, 32):
        raise ValueError(
            f"{name} must be 16, 24 or 32 bytes in base64 (make one with "
            "`python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'`)"
        )
    return key


def new_key() -> bytes:
    """A fresh 256-bit AES key."""
    return AESGCM.generate_key(bit_length=256)


class Aead:
    """AES-GCM under one key: each value sealed with a fresh nonce and bound to a
    `context` (its owner), so that a value moved to another row does not open."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plain: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plain, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], context)
        except InvalidTag:
            raise ValueError("a sealed value fails authentication: wrong key?") from None

    def seal_text(self, text: str, context: bytes) -> str:
        return base64.b64encode(self.seal(text.encode(), context)).decode()

    def open_text(self, sealed: str, context: bytes) -> str:
        return self.open(base64.b64decode(sealed), context).decode()


class Sealer(Aead):
    """AES-256-GCM under a key derived from the encryption key for one purpose."""

    def __init__(self, key: bytes, purpose: str) -> None:
        super().__init__(
            HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=f"edgekeys {purpose}".encode()
            ).derive(key)
        )
