"""Who may call edgekeys: the callers file, authentication, roles and projects.

`EDGEKEYS_CALLERS_FILE` is TOML, one `[[caller]]` table each: a name (recorded as the
actor of every change the caller makes), the SHA-256 of its bearer token and/or the
subject of its mTLS client certificate, its roles and the projects it may touch. Only
digests are stored, so the file can be read by anyone who may read the config.

Every RPC but health and reflection goes through `Gate.admit`, which finds the caller
and checks its role; handlers then check the project they touch with `authorize`.
With no callers file and no mTLS, every call is `ANONYMOUS` (all roles, all projects),
which the server allows only on a loopback address (see `service.runtime.exposure`).
"""

import contextvars
import hashlib
import logging
import os
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from service.domain import names
from service.security.ratelimit import FailureLimiter

log = logging.getLogger(__name__)

ROLES = ("admin", "gateway", "auditor", "follower")
ALL = "*"
TOKEN_PREFIX = "ekc_"  # caller tokens are recognisable, for secret scanners
_DIGEST = hashlib.sha256


class CallerRejected(Exception):
    """The caller is unknown, lacks the role, may not touch the project, or has failed
    too often: UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    projects: frozenset[str]  # project IDs, or {ALL}

    @property
    def everywhere(self) -> bool:
        return ALL in self.projects

    def may_touch(self, project: str) -> bool:
        return ALL in self.projects or project in self.projects


ANONYMOUS = Caller("anonymous", frozenset(ROLES), frozenset({ALL}))
_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=ANONYMOUS)


def current() -> Caller:
    """The caller of the RPC being handled."""
    return _current.get()


def authorize(project: str) -> Caller:
    """The current caller, if it may touch `project`. The refusal is the same whether
    or not anything exists there: it tells nothing about another project's keys."""
    caller = _current.get()
    if not caller.may_touch(project):
        raise CallerRejected(
            grpc.StatusCode.PERMISSION_DENIED,
            "PROJECT_NOT_ALLOWED",
            f"caller {caller.name!r} may not touch project {project!r}",
        )
    return caller


def scope(deployment: str) -> Caller | None:
    """For validation: the current caller when it is limited to some projects (and
    allowed the deployment's), else None. A scoped gateway is told nothing of other
    projects' keys: they are VERDICT_NOT_FOUND to it. The deployment's name is parsed
    only for a scoped caller: the common case costs a context variable read."""
    caller = _current.get()
    if caller.everywhere:
        return None
    return authorize(names.deployment_project(deployment) or "")


@dataclass(frozen=True)
class Callers:
    """The callers file, parsed."""

    by_token: Mapping[bytes, Caller]  # SHA-256 of the token → caller
    by_subject: Mapping[str, Caller]  # mTLS subject → caller

    @classmethod
    def parse(cls, text: str, source: str = "callers file") -> "Callers":
        try:
            tables = tomllib.loads(text).get("caller", [])
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{source}: {error}") from None
        if not isinstance(tables, list):
            raise ValueError(f"{source}: expected [[caller]] tables")
        by_token: dict[bytes, Caller] = {}
        by_subject: dict[str, Caller] = {}
        seen: set[str] = set()
        for number, table in enumerate(tables, 1):
            where = f"{source}: caller {number}"
            caller, digest, subject = _caller(table, where)
            if caller.name in seen:
                raise ValueError(f"{where}: name {caller.name!r} is used twice")
            seen.add(caller.name)
            if digest is not None:
                if digest in by_token:
                    raise ValueError(f"{where}: token_sha256 is used twice")
                by_token[digest] = caller
            if subject is not None:
                if subject in by_subject:
                    raise ValueError(f"{where}: tls_subject {subject!r} is used twice")
                by_subject[subject] = caller
        return cls(by_token, by_subject)

    @classmethod
    def load(cls, path: str) -> "Callers":
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ValueError(f"cannot read the callers file: {error}") from None
        return cls.parse(text, path)


def _caller(table: Any, where: str) -> tuple[Caller, bytes | None, str | None]:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table")
    if extra := set(table) - {"name", "token_sha256", "roles", "projects", "tls_subject"}:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(extra))}")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: needs a name")
    where = f"{where} ({name})"
    digest = None
    if "token_sha256" in table:
        try:
            digest = bytes.fromhex(table["token_sha256"])
        except (TypeError, ValueError):
            digest = b""
        if len(digest) != _DIGEST().digest_size:
            raise ValueError(f"{where}: token_sha256 must be 64 hex digits")
    subject = table.get("tls_subject")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise ValueError(f"{where}: tls_subject must be a non-empty string")
    if digest is None and subject is None:
        raise ValueError(f"{where}: needs token_sha256 or tls_subject")
    roles = _strings(table.get("roles"), f"{where}: roles")
    if unknown := roles - set(ROLES):
        raise ValueError(
            f"{where}: unknown roles {', '.join(sorted(unknown))}; known: {', '.join(ROLES)}"
        )
    projects = _strings(table.get("projects"), f"{where}: projects")
    if bad := {p for p in projects if p != ALL and not names.is_project(p)}:
        raise ValueError(f"{where}: projects must be project IDs or {ALL!r}, not {sorted(bad)}")
    return Caller(name, roles, projects), digest, subject


def _strings(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a non-empty list of strings")
    return frozenset(value)


def new_token() -> tuple[str, str]:
    """A caller token and the hex digest the callers file keeps."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, _DIGEST(token.encode()).hexdigest()


def caller_table(
    name: str,
    digest: str | None,
    roles: Sequence[str],
    projects: Sequence[str],
    subject: str | None,
) -> str:
    """One `[[caller]]` table, as `callers add` appends it."""
    lines = ["[[caller]]", f"name = {_toml(name)}"]
    if digest:
        lines.append(f"token_sha256 = {_toml(digest)}")
    if subject:
        lines.append(f"tls_subject = {_toml(subject)}")
    lines.append(f"roles = [{', '.join(map(_toml, roles))}]")
    lines.append(f"projects = [{', '.join(map(_toml, projects))}]")
    return "\n".join(lines) + "\n"


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Gate:
    """Finds the caller of each RPC: its bearer token, else its client certificate.

    `path` is the callers file, re-read by `reload` (on SIGHUP, and when `watch` sees
    it change); a file that fails to parse leaves the callers as they were. With no
    file but a client CA (`mtls`), any certificate that CA signed is a caller with
    every role in every project, named by its subject.
    """

    def __init__(
        self, path: str | None, *, mtls: bool = False, failures: FailureLimiter | None = None
    ) -> None:
        self.path = path
        self.mtls = mtls
        self.failures = failures  # per peer address
        self.callers = Callers.load(path) if path else Callers({}, {})
        self._version = _version(path) if path else None

    def reload(self) -> bool:
        """Re-read the callers file. Returns whether the callers changed."""
        if not self.path:
            return False
        version = _version(self.path)
        try:
            callers = Callers.load(self.path)
        except ValueError as error:
            log.error("callers file not reloaded, keeping the callers as they were: %s", error)
            self._version = version  # reported once; the next change is tried again
            return False
        self._version = version
        changed = callers != self.callers
        self.callers = callers
        log.info(
            "callers file %s loaded: %d tokens, %d certificate subjects",
            self.path,
            len(callers.by_token),
            len(callers.by_subject),
        )
        return changed

    def changed_on_disk(self) -> bool:
        return self.path is not None and _version(self.path) != self._version

    def admit(self, context: grpc.aio.ServicerContext, role: str) -> Caller:
        """The caller of this RPC, if it has `role`; makes it `current()`."""
        try:
            caller = self._authenticate(context)
        except CallerRejected:
            self._failed(context)
            raise
        if role not in caller.roles:
            raise CallerRejected(
                grpc.StatusCode.PERMISSION_DENIED,
                "ROLE_NOT_ALLOWED",
                f"caller {caller.name!r} lacks the role {role!r} this service needs",
            )
        _current.set(caller)
        return caller

    def identify(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller of a request, whatever its roles (the console's sign-in and
        pages); a failure counts toward the same limit as a refused RPC's."""
        try:
            return self._authenticate(context)
        except CallerRejected:
            self._failed(context)
            raise

    def _failed(self, context: grpc.aio.ServicerContext) -> None:
        if self.failures is not None:
            peer = _host(context.peer())
            if self.failures.limited(peer):
                raise CallerRejected(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TOO_MANY_FAILED_AUTHENTICATIONS",
                    "too many failed authentications from this address; retry later",
                ) from None
            self.failures.failed(peer)

    def _authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        token = _bearer(context.invocation_metadata() or ())
        if token is not None:
            found = self.callers.by_token.get(_DIGEST(token.encode()).digest())
            if found is None:
                raise _unauthenticated("the bearer token is not one of a known caller")
            return found
        # The console's caller: the digest of the token typed at sign-in, which its
        # session keeps instead of the token (an attribute of the console's own
        # context, so no metadata can set it).
        signed_in = getattr(context, "token_digest", None)
        if signed_in is not None:
            if (found := self.callers.by_token.get(signed_in)) is None:
                raise _unauthenticated("no caller in the callers file has this token")
            return found
        subject = _subject(context)
        if subject is not None:
            if self.path is None and self.mtls:
                return Caller(subject, frozenset(ROLES), frozenset({ALL}))
            if (found := self.callers.by_subject.get(subject)) is not None:
                return found
            raise _unauthenticated(f"no caller has the certificate subject {subject!r}")
        raise _unauthenticated("send 'authorization: Bearer TOKEN' metadata")


def digest(token: str) -> bytes:
    """The SHA-256 of a caller token: what the callers file and sessions keep."""
    return _DIGEST(token.encode()).digest()


def _unauthenticated(message: str) -> CallerRejected:
    return CallerRejected(grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED", message)


# `Authorization: Bearer TOKEN`, or `APIKey TOKEN` as Gcore's SDK sends it.
_SCHEMES = frozenset({"bearer", "apikey"})


def _bearer(metadata: Sequence[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() in _SCHEMES else ""
    return None


def _subject(context: grpc.aio.ServicerContext) -> str | None:
    found = context.auth_context().get("x509_subject")
    return found[0].decode() if found else None


def _host(peer: str) -> str:
    """The address of a gRPC peer (`ipv4:10.0.0.1:5000`, `ipv6:[::1]:5000`), no port."""
    address = peer.partition(":")[2]
    host, colon, port = address.rpartition(":")
    return host.strip("[]") if colon and port.isdigit() else address


def _version(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
