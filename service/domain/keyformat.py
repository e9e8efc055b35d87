"""The one place that knows what an edgekeys secret looks like.

A secret is ``edk_`` + 43 base62 characters (256 random bits) + 6 base62 characters
of CRC32 over those 43, GitHub-style: a mistyped or truncated secret is refused
before any lookup, and scanners find leaked ones with ``SCANNER_REGEX``.
"""

import hashlib
import re
import secrets
import zlib

PREFIX = "edk_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS = 43  # 62**43 > 2**256
CHECKSUM_CHARS = 6  # 62**6 > 2**32
SECRET_LENGTH = len(PREFIX) + RANDOM_CHARS + CHECKSUM_CHARS
SCANNER_REGEX = r"edk_[0-9A-Za-z]{49}"

_SHAPE = re.compile(SCANNER_REGEX, re.ASCII).fullmatch
_PAIRS = {a + b: i * 62 + j for i, a in enumerate(ALPHABET) for j, b in enumerate(ALPHABET)}


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_CHARS)


def new_secret() -> str:
    """A fresh secret with 256 bits from the OS's CSPRNG."""
    body = _base62(secrets.randbits(256), RANDOM_CHARS)
    return PREFIX + body + _checksum(body)


def is_well_formed(secret: str) -> bool:
    """Prefix, length, alphabet and checksum hold. Cheap: no hashing, no lookup."""
    if len(secret) != SECRET_LENGTH or _SHAPE(secret) is None:
        return False
    # Decoding the 6 checksum characters two at a time is 4x faster than encoding the
    # CRC; this runs on every validation.
    presented = _PAIRS[secret[-6:-4]] * 62**4 + _PAIRS[secret[-4:-2]] * 62**2 + _PAIRS[secret[-2:]]
    return presented == zlib.crc32(secret[len(PREFIX) : -CHECKSUM_CHARS].encode("ascii"))


def digest(secret: str) -> bytes:
    """What is stored and looked up instead of the secret: its SHA-256."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def hint(secret: str) -> str:
    """A reminder for people: the prefix and 4 characters at each end."""
    return f"{secret[: len(PREFIX) + 4]}…{secret[-4:]}"
