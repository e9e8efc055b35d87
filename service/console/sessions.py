"""The console's sessions: server-side, in this process's memory (a restart signs
everyone out; `--workers N` would split them, so the console is served by one worker
only). A session is named by a random cookie that carries no token; the session keeps
the signed-in caller's token by its SHA-256 only, and is kept by the SHA-256 of its
cookie, so neither a live cookie nor a token can be read back from memory.

Every visitor gets a session before signing in, so that the sign-in form too carries a
CSRF token bound to it; signing in replaces it with a new one (a cookie planted before
sign-in is worth nothing after). Sessions idle for 12 hours end; at most LIMIT of each
kind (signed in or not) are kept, the longest idle going first.
"""

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.domain.clock import Clock

IDLE = timedelta(hours=12)
LIMIT = 10_000


@dataclass
class Session:
    csrf: str  # sent back with every state-changing request
    seen: datetime  # the last request in it
    token_digest: bytes | None = None  # the signed-in caller's token, by its SHA-256
    notice: str = ""  # a message for the next page shown ("API key … deleted")

    def pop_notice(self) -> str:
        notice, self.notice = self.notice, ""
        return notice


class Sessions:
    def __init__(self, clock: Clock, idle: timedelta = IDLE, limit: int = LIMIT) -> None:
        self.clock = clock
        self.idle = idle
        self.limit = limit
        # by the digest of the cookie; least recently seen first
        self._signed_in: OrderedDict[bytes, Session] = OrderedDict()
        self._visitors: OrderedDict[bytes, Session] = OrderedDict()

    def get(self, cookie: str | None) -> Session | None:
        """The live session this cookie names, now seen again; None if it names none."""
        if not cookie:
            return None
        now = self.clock()
        key = _key(cookie)
        for kind in (self._signed_in, self._visitors):
            self._expire(kind, now)
            session = kind.get(key)
            if session is not None:
                session.seen = now
                kind.move_to_end(key)
                return session
        return None

    def start(self) -> tuple[str, Session]:
        """A new session, not signed in: its cookie and itself."""
        return self._add(self._visitors, None)

    def sign_in(self, cookie: str | None, token_digest: bytes) -> tuple[str, Session]:
        """End the session `cookie` names and start a signed-in one under a new cookie."""
        self.end(cookie)
        return self._add(self._signed_in, token_digest)

    def end(self, cookie: str | None) -> None:
        """At once: the cookie names nothing from now on."""
        if cookie:
            key = _key(cookie)
            self._signed_in.pop(key, None)
            self._visitors.pop(key, None)

    def __len__(self) -> int:
        return len(self._signed_in) + len(self._visitors)

    def _add(
        self, kind: OrderedDict[bytes, Session], token_digest: bytes | None
    ) -> tuple[str, Session]:
        now = self.clock()
        self._expire(kind, now)
        while len(kind) >= self.limit:
            kind.popitem(last=False)
        cookie = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), now, token_digest)
        kind[_key(cookie)] = session
        return cookie, session

    def _expire(self, kind: OrderedDict[bytes, Session], now: datetime) -> None:
        while kind:
            oldest = next(iter(kind.values()))
            if now - oldest.seen < self.idle:
                return
            kind.popitem(last=False)


def _key(cookie: str) -> bytes:
    return hashlib.sha256(cookie.encode()).digest()
