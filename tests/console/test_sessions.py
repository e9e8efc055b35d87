"""The console's sessions, without a browser: idle expiry, sign-out at once, a new
cookie at sign-in, bounded memory, nothing that could be replayed kept."""

from datetime import timedelta

from service.console.sessions import Sessions
from tests.conftest import FakeClock


def test_a_session_ends_after_12_hours_idle_and_not_before(clock: FakeClock) -> None:
    sessions = Sessions(clock)
    cookie, _ = sessions.sign_in(None, b"d" * 32)
    clock.advance(hours=11, minutes=59)
    assert sessions.get(cookie) is not None  # seen: idle from now again
    clock.advance(hours=11, minutes=59)
    assert sessions.get(cookie) is not None
    clock.advance(hours=12)
    assert sessions.get(cookie) is None


def test_sign_out_ends_a_session_at_once_and_sign_in_replaces_the_cookie(
    clock: FakeClock,
) -> None:
    sessions = Sessions(clock)
    planted, before = sessions.start()
    cookie, after = sessions.sign_in(planted, b"d" * 32)
    assert cookie != planted and sessions.get(planted) is None  # no session fixation
    assert after.csrf != before.csrf and after.token_digest == b"d" * 32
    sessions.end(cookie)
    assert sessions.get(cookie) is None


def test_sessions_are_bounded_and_kept_by_the_digest_of_their_cookie(clock: FakeClock) -> None:
    sessions = Sessions(clock, idle=timedelta(hours=12), limit=3)
    cookies = [sessions.start()[0] for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.get(cookies[0]) is None and sessions.get(cookies[4]) is not None
    kept = repr(vars(sessions))
    assert not any(cookie in kept for cookie in cookies)
