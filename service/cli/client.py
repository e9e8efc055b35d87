"""The CLI's client side: commands that talk to a running edgekeys over gRPC.

Client options (`--server`, `--token`, `--ca-cert`, `--json`) are accepted anywhere on
the line; each has an EDGEKEYS_* variable.
"""

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from edgekeys.v1 import api_keys_pb2_grpc, audit_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import audit_pb2 as apb
from service.domain.clock import written_moment

DEFAULT_SERVER = "127.0.0.1:50051"


@dataclass(frozen=True)
class Client:
    channel: grpc.Channel
    json: bool
    out: TextIO

    @property
    def audit(self) -> audit_pb2_grpc.AuditServiceStub:
        return audit_pb2_grpc.AuditServiceStub(self.channel)

    @property
    def keys(self) -> api_keys_pb2_grpc.ApiKeyServiceStub:
        return api_keys_pb2_grpc.ApiKeyServiceStub(self.channel)

    @property
    def validation(self) -> validation_pb2_grpc.ValidationServiceStub:
        return validation_pb2_grpc.ValidationServiceStub(self.channel)

    def emit(self, message: Message) -> None:
        """One message as a line of protobuf JSON (proto field names)."""
        text = json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)
        print(text, file=self.out, flush=True)


def client_options() -> argparse.ArgumentParser:
    """Options every client command takes, wherever they stand on the line."""
    options = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's copy must not reset a value given before the subcommand.
    options.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        help=f"host:port of edgekeys (env EDGEKEYS_SERVER, default {DEFAULT_SERVER})",
    )
    options.add_argument(
        "--token", default=argparse.SUPPRESS, help="bearer token (env EDGEKEYS_TOKEN)"
    )
    options.add_argument(
        "--ca-cert",
        default=argparse.SUPPRESS,
        help="CA certificate to verify the server's TLS certificate (env EDGEKEYS_CA_CERT)",
    )
    options.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print protobuf JSON"
    )
    return options


def add_commands(commands: Any, options: argparse.ArgumentParser) -> None:
    audit = commands.add_parser(
        "audit", parents=[options], help="history, log and proof for auditors"
    )
    verbs = audit.add_subparsers(dest="verb", required=True)

    history = verbs.add_parser("history", parents=[options], help="every event of one key")
    history.add_argument("key", help="projects/PROJECT/apiKeys/ID")
    history.set_defaults(run=audit_history)

    log = verbs.add_parser("log", parents=[options], help="a project's events in commit order")
    log.add_argument("project", help="projects/PROJECT")
    log.add_argument("--since", type=moment, help="only events from then on (2026-11-23 or ISO)")
    log.add_argument("--follow", action="store_true", help="keep following new events")
    log.set_defaults(run=audit_log)

    verify = verbs.add_parser("verify", parents=[options], help="check the hash chain")
    verify.add_argument("--project", help="check only this project's events (projects/P)")
    verify.add_argument(
        "--checkpoint", type=checkpoint, help="POSITION:DIGEST returned by an earlier verify"
    )
    verify.add_argument(
        "--full",
        action="store_true",
        help="recompute every link from the first event (default: only those after the "
        "server's stored checkpoint, the head of the last check that passed)",
    )
    verify.set_defaults(run=audit_verify)


def run(arguments: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a client command; errors become one line on stderr and exit code 1."""
    out = out or sys.stdout
    options = vars(arguments)
    server = options.get("server") or os.environ.get("EDGEKEYS_SERVER", DEFAULT_SERVER)
    try:
        with _channel(server, Credentials.of(arguments).channel(server)) as channel:
            command: Callable[[Client, argparse.Namespace], int] = arguments.run
            return command(Client(channel, bool(options.get("json")), out), arguments)
    except grpc.RpcError as error:
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"edgekeys: cannot reach {server}: {error.details()}", file=sys.stderr)
        else:
            print(f"edgekeys: {code.name}: {error.details()}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        print(f"edgekeys: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


@dataclass(frozen=True)
class Credentials:
    """The client options `--token` and `--ca-cert` (or EDGEKEYS_TOKEN, EDGEKEYS_CA_CERT)."""

    token: str | None = field(default=None, repr=False)
    ca_cert: str | None = None  # a path

    @classmethod
    def of(cls, arguments: argparse.Namespace) -> "Credentials":
        options = vars(arguments)
        return cls(
            options.get("token") or os.environ.get("EDGEKEYS_TOKEN"),
            options.get("ca_cert") or os.environ.get("EDGEKEYS_CA_CERT"),
        )

    def channel(self, server: str) -> grpc.ChannelCredentials | None:
        """None for a plain channel. With a CA, TLS verified by it; a token alone goes
        over TLS with the system's CAs, or in clear only to a loopback address."""
        if self.ca_cert is None and self.token is None:
            return None
        if self.ca_cert is None and is_loopback(server):
            transport = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        else:
            ca = Path(self.ca_cert).read_bytes() if self.ca_cert else None
            transport = grpc.ssl_channel_credentials(ca)
        if not self.token:
            return transport
        return grpc.composite_channel_credentials(
            transport, grpc.access_token_call_credentials(self.token)
        )


def is_loopback(address: str) -> bool:
    """Whether a `host:port` is reachable only from this machine."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # no host (every interface), or a name that may resolve anywhere


def _channel(server: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(server)
    return grpc.secure_channel(server, credentials)


def moment(text: str) -> datetime:
    """A date (00:00 UTC that day) or an ISO 8601 moment (UTC unless it says)."""
    try:
        return written_moment(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO time: {text!r}") from None


def checkpoint(text: str) -> apb.Checkpoint:
    position, _, digest = text.partition(":")
    if not position.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError("expected POSITION:DIGEST (64 hex digits)")
    return apb.Checkpoint(position=int(position), digest=digest)


def project_name(text: str) -> str:
    return text if text.startswith("projects/") else f"projects/{text}"


# audit ------------------------------------------------------------------------


def audit_history(client: Client, arguments: argparse.Namespace) -> int:
    def pages() -> Iterator[apb.AuditEvent]:
        token = ""
        while True:
            page = client.audit.ListApiKeyEvents(
                apb.ListApiKeyEventsRequest(name=arguments.key, page_size=1000, page_token=token)
            )
            yield from page.events
            if not (token := page.next_page_token):
                return

    _print_events(client, pages())
    return 0


def audit_log(client: Client, arguments: argparse.Namespace) -> int:
    parent = project_name(arguments.project)
    request = apb.ListEventsRequest(parent=parent, page_size=1000)
    if arguments.since:
        request.start_time.FromDatetime(arguments.since)
    last = 0

    def listed() -> Iterator[apb.AuditEvent]:
        nonlocal last
        while True:
            request.after_position = last
            page = client.audit.ListEvents(request)
            for event in page.events:
                last = event.position
                yield event
            if not page.next_page_token:
                return

    def followed() -> Iterator[apb.AuditEvent]:
        yield from listed()
        if arguments.follow:
            stream = client.audit.WatchEvents(
                apb.WatchEventsRequest(parent=parent, after_position=last)
            )
            for message in stream:
                yield message.event

    _print_events(client, followed())
    return 0


def audit_verify(client: Client, arguments: argparse.Namespace) -> int:
    request = apb.VerifyAuditLogRequest(
        parent=project_name(arguments.project) if arguments.project else "",
        scope=apb.VerifyAuditLogRequest.SCOPE_FULL
        if arguments.full
        else apb.VerifyAuditLogRequest.SCOPE_SINCE_STORED_CHECKPOINT,
    )
    if arguments.checkpoint:
        request.checkpoint.CopyFrom(arguments.checkpoint)
    result = client.audit.VerifyAuditLog(request)
    if client.json:
        client.emit(result)
    elif result.ok:
        print(
            f"ok: {result.events_checked} events verified"
            + (
                f" after the server's checkpoint at position {result.verified_from} "
                "(--full checks every event)\n"
                if result.verified_from
                else " from the first\n"
            )
            + f"checkpoint: {result.checkpoint.position}:{result.checkpoint.digest}\n"
            "keep the checkpoint; pass it back with --checkpoint to detect history rewritten "
            "or cut off since",
            file=client.out,
        )
    else:
        print(f"FAILED at position {result.first_bad_position}: {result.problem}", file=client.out)
    return 0 if result.ok else 1


def _print_events(client: Client, events: Iterable[apb.AuditEvent]) -> None:
    if client.json:
        for event in events:
            client.emit(event)
        return
    row = "{:>8}  {:<20}  {:<18}  {:>7}  {:<16}  {}"
    header = row.format("POSITION", "TIME (UTC)", "EVENT", "VERSION", "ACTOR", "KEY  CHANGE")
    for number, event in enumerate(events):
        if number == 0:  # after the first answer, so that an error stands alone
            print(header, file=client.out)
        change = f"{event.api_key}  {_change(event)}".rstrip()
        line = row.format(
            event.position,
            utc_time(event.occur_time),
            event.event_type,
            event.version,
            event.actor[:16],
            change,
        )
        print(line, file=client.out, flush=True)


def _change(event: apb.AuditEvent) -> str:
    """The values an event set, in a few words."""
    erased = " (personal data erased)" if event.personal_data_erased else ""
    match event.WhichOneof("values"):
        case "key_created":
            created = event.key_created
            expiry = utc_time(created.expire_time) if created.HasField("expire_time") else "never"
            deployments = ",".join(created.deployments)
            return (
                f"name={created.display_name!r} deployments={deployments} expires={expiry}{erased}"
            )
        case "details_changed":
            details = event.details_changed
            fields = [
                f"{field}={getattr(details, field)!r}"
                for field in ("display_name", "description")
                if details.HasField(field)
            ]
            return " ".join(fields) + erased
        case "deployment_attached":
            return f"+{event.deployment_attached.deployment}"
        case "deployment_detached":
            return f"-{event.deployment_detached.deployment}"
        case "expiry_changed":
            changed = event.expiry_changed
            return "expires=" + (
                utc_time(changed.expire_time) if changed.HasField("expire_time") else "never"
            )
        case _:
            return ""


def utc_time(stamp: Any) -> str:
    return str(stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
