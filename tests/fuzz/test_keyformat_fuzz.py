"""service/keyformat.py's is_well_formed, fuzzed: it never raises and agrees with a
reference written from the format's definition (prefix, length, base62, CRC32)."""

from hypothesis import given
from hypothesis import strategies as st

from service.domain import keyformat
from tests.fuzz.conftest import scaled
from tests.test_keyformat import BASE62, checksum, with_checksum

FUZZ = scaled(40)
bodies = st.text(alphabet=BASE62, min_size=43, max_size=43)


def reference(candidate: str) -> bool:
    return (
        candidate.startswith("edk_")
        and len(candidate) == 53
        and all(c in BASE62 for c in candidate[4:])
        and candidate[-6:] == checksum(candidate[4:-6])
    )


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    """A well-formed secret, then edited: a character replaced (by anything, including
    other scripts' digits and letters), inserted or deleted."""
    secret = with_checksum(draw(bodies))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(secret)))
        other = draw(st.characters() | st.sampled_from(BASE62 + "_-+/=٣ＡßİK"))
        match draw(st.sampled_from(["replace", "insert", "delete"])):
            case "replace":
                secret = secret[:where] + other + secret[where + 1 :]
            case "insert":
                secret = secret[:where] + other + secret[where:]
            case "delete":
                secret = secret[:where] + secret[where + 1 :]
    return secret


@FUZZ
@given(st.text() | st.text(alphabet=BASE62 + "edk_", max_size=60) | near_misses())
def test_is_well_formed_never_raises_and_agrees_with_the_reference(candidate: str) -> None:
    assert keyformat.is_well_formed(candidate) is reference(candidate)


@FUZZ
@given(bodies)
def test_every_body_with_its_checksum_is_well_formed(body: str) -> None:
    assert keyformat.is_well_formed(with_checksum(body))
