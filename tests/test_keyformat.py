"""service/keyformat.py: what a secret looks like, and what is refused before any lookup."""

import hashlib
import re
import zlib

import pytest

from service.domain import keyformat

SCANNER = re.compile(r"edk_[0-9A-Za-z]{49}")  # what leak scanners are told; never change
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def checksum(body: str) -> str:
    """CRC32 of the body in 6 base62 digits, computed here independently of the module."""
    number = zlib.crc32(body.encode())
    digits = ""
    for _ in range(6):
        number, digit = divmod(number, 62)
        digits = BASE62[digit] + digits
    return digits


def with_checksum(body: str, prefix: str = "edk_") -> str:
    return prefix + body + checksum(body)


@pytest.fixture
def secret() -> str:
    return keyformat.new_secret()


def test_new_secret_matches_the_scanner_pattern_and_is_well_formed(secret: str) -> None:
    assert SCANNER.fullmatch(secret)
    assert SCANNER.pattern == keyformat.SCANNER_REGEX
    assert len(secret) == 53
    assert keyformat.is_well_formed(secret)


def test_new_secret_ends_with_the_crc32_of_its_random_part(secret: str) -> None:
    assert secret == with_checksum(secret[4:47])


def test_new_secrets_differ() -> None:
    secrets = {keyformat.new_secret() for _ in range(100)}

    assert len(secrets) == 100
    assert all(keyformat.is_well_formed(s) for s in secrets)


def test_every_single_character_substitution_is_rejected(secret: str) -> None:
    accepted = [
        (position, replacement)
        for position in range(len(secret))
        for replacement in BASE62 + "_"
        if replacement != secret[position]
        and keyformat.is_well_formed(secret[:position] + replacement + secret[position + 1 :])
    ]

    assert accepted == []


def test_swapping_two_adjacent_characters_is_rejected(secret: str) -> None:
    swapped = [
        secret[:i] + secret[i + 1] + secret[i] + secret[i + 2 :]
        for i in range(4, len(secret) - 1)
        if secret[i] != secret[i + 1]
    ]

    assert swapped
    assert not any(keyformat.is_well_formed(s) for s in swapped)


@pytest.mark.parametrize("prefix", ["", "edk", "EDK_", "edx_", "edk-", "sk_", "edk__", "xedk_"])
def test_a_wrong_prefix_is_rejected_even_with_a_valid_checksum(secret: str, prefix: str) -> None:
    body = secret[4:47]

    assert not keyformat.is_well_formed(with_checksum(body, prefix=prefix))


@pytest.mark.parametrize("length", [0, 1, 42, 44, 49, 86])
def test_a_wrong_length_is_rejected_even_with_a_valid_checksum(length: int) -> None:
    body = (BASE62 * 2)[:length]

    assert not keyformat.is_well_formed(with_checksum(body))


def test_a_truncated_or_extended_secret_is_rejected(secret: str) -> None:
    assert not keyformat.is_well_formed(secret[:-1])
    assert not keyformat.is_well_formed(secret[1:])
    assert not keyformat.is_well_formed(secret + "0")
    assert not keyformat.is_well_formed(secret + "\n")
    assert not keyformat.is_well_formed(" " + secret)


@pytest.mark.parametrize("character", ["-", "_", "+", "/", "=", " ", ".", "\x00"])
def test_non_base62_characters_are_rejected_even_with_a_valid_checksum(
    secret: str, character: str
) -> None:
    body = character + secret[5:47]
    crafted = with_checksum(body)

    assert len(crafted) == len(secret)
    assert not keyformat.is_well_formed(crafted)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "edk_",
        "edk_" + "é" * 49,
        "edk_" + "٣" * 49,  # Arabic-Indic digit: str.isdigit() says yes, base62 says no
        "edk_" + "Ａ" * 49,  # fullwidth A
        "ｅｄｋ_" + "A" * 49,
        "edk_" + "A" * 48 + "ß",
        "🔑" * 53,
    ],
    ids=[
        "empty",
        "prefix-only",
        "latin",
        "arabic-digits",
        "fullwidth",
        "fullwidth-prefix",
        "eszett",
        "emoji",
    ],
)
def test_empty_and_non_ascii_strings_are_rejected(candidate: str) -> None:
    assert not keyformat.is_well_formed(candidate)


@pytest.mark.parametrize("size", [54, 1_000, 1_000_000])
def test_very_long_strings_are_rejected(secret: str, size: int) -> None:
    assert not keyformat.is_well_formed((secret * (size // len(secret) + 1))[:size])


def test_hint_shows_at_most_the_prefix_and_four_characters_at_each_end(secret: str) -> None:
    hint = keyformat.hint(secret)
    head, separator, tail = hint.partition("…")

    assert separator == "…"
    assert secret.startswith(head)
    assert secret.endswith(tail)
    assert head.startswith("edk_")
    assert len(head) <= len("edk_") + 4
    assert len(tail) <= 4


def test_hint_does_not_contain_the_middle_of_the_secret(secret: str) -> None:
    hint = keyformat.hint(secret)
    middle = secret[8:-4]

    assert middle not in hint
    # No run of 5 secret characters from the middle shows up anywhere in the hint.
    assert not any(middle[i : i + 5] in hint for i in range(len(middle) - 4))


def test_digest_is_the_sha256_of_the_secret(secret: str) -> None:
    assert keyformat.digest(secret) == hashlib.sha256(secret.encode("ascii")).digest()
    assert len(keyformat.digest(secret)) == 32
    assert keyformat.digest(secret) != keyformat.digest(keyformat.new_secret())
