"""`edgekeys keys …`: create, list, change and validate API keys through a running server.

Each verb is a parser made by `_Verbs.add` and a function `(Client, Namespace) -> int`;
`run` in service/client.py turns gRPC errors into one line and exit code 1.
"""

import argparse
import getpass
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from google.protobuf.message import Message

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from service.cli.client import Client, moment, project_name, utc_time
from service.domain.names import deployment_project, parse_key

Command = Callable[[Client, argparse.Namespace], int]
PAGE_SIZE = 1000  # the most ListApiKeys returns at once


@dataclass(frozen=True)
class Expiry:
    """What `--expires` said: a moment, or None for never."""

    at: datetime | None


def expiry(text: str) -> Expiry:
    """`never`, a date (00:00 UTC that day, as on the product page) or an ISO 8601 moment."""
    return Expiry(None if text == "never" else moment(text))


def add_commands(commands: Any, options: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "keys", parents=[options], help="create, list, change and validate API keys"
    )
    verbs = _Verbs(group.add_subparsers(dest="verb", required=True), options)

    create = verbs.add("create", keys_create, "create a key; its secret is printed once")
    create.add_argument("--project", help="projects/P (default: the first deployment's project)")
    create.add_argument("--id", default="", help="the key's ID (default: the server picks one)")
    create.add_argument("--name", dest="display_name", metavar="TEXT", required=True)
    create.add_argument("--description", default="")
    _deployment_option(create, "a deployment the key may reach; repeatable", action="append")
    _expires_option(create, "default: never")

    listing = verbs.add("list", keys_list, "a project's keys, as a table")
    listing.add_argument("project", help="projects/P")
    _deployment_option(listing, "only the keys attached to this deployment")
    listing.add_argument("--all", action="store_true", help="include deleted keys")

    verbs.add_key("get", keys_get, "one key's details (never its secret)")

    update = verbs.add_key("update", keys_update, "change name, description or expiry", etag=True)
    update.add_argument("--name", dest="display_name", metavar="TEXT", help="new display name")
    update.add_argument("--description", help="new description")
    _expires_option(update, "`never` removes the expiry")

    for verb, preposition in (("attach", "to"), ("detach", "from")):
        summary = f"{verb} a deployment {preposition} a key"
        change = verbs.add_key(verb, keys_attach_or_detach, summary, etag=True)
        change.add_argument(
            "deployment", help="projects/P/deployments/D, or D in the key's project"
        )

    delete = verbs.add_key("delete", keys_delete, "delete a key, at once and for good", etag=True)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    rotate = verbs.add_key(
        "rotate", keys_rotate, "give a key a new secret, printed once", etag=True
    )
    rotate.add_argument(
        "--grace",
        type=grace,
        default=timedelta(0),
        help="how long the old secret keeps working: 30m, 24h, 7d (at most); default 0",
    )

    verbs.add(
        "lookup",
        keys_lookup,
        "the key behind a secret (read from stdin: a command line is visible to others)",
    )

    validate = verbs.add(
        "validate",
        keys_validate,
        "ask, as a gateway does, whether a secret may reach a deployment (exit code 0: allowed)",
    )
    validate.add_argument("--deployment", required=True, help="projects/P/deployments/D")
    validate.add_argument(
        "secret",
        nargs="?",
        help="the secret; better omitted and given on stdin, since other users "
        "of this machine can see a command line (ps)",
    )


@dataclass(frozen=True)
class _Verbs:
    subparsers: Any
    options: argparse.ArgumentParser

    def add(self, name: str, command: Command, summary: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.subparsers.add_parser(
            name, parents=[self.options], help=summary, description=summary
        )
        parser.set_defaults(run=command, parser=parser)
        return parser

    def add_key(
        self, name: str, command: Command, summary: str, etag: bool = False
    ) -> argparse.ArgumentParser:
        """A verb on one key, named by the first argument; `etag`: it changes the key."""
        parser = self.add(name, command, summary)
        parser.add_argument("key", help="projects/P/apiKeys/ID")
        if etag:
            parser.add_argument("--etag", default="", help="change only if the key still has it")
        return parser


def _deployment_option(parser: argparse.ArgumentParser, help: str, **kwargs: Any) -> None:
    parser.add_argument(
        "--deployment",
        help=f"{help} (projects/P/deployments/D, or D with the project given)",
        **kwargs,
    )


def _expires_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--expires",
        type=expiry,
        help=f"never, a date (00:00 UTC that day: 2027-01-31) or an ISO 8601 time; {default}",
    )


def _usage_error(arguments: argparse.Namespace, message: str) -> NoReturn:
    """argparse's usage line and exit code 2, as for any other bad argument."""
    parser: argparse.ArgumentParser = arguments.parser
    parser.error(message)


def _deployment(text: str, project: str | None) -> str:
    """A full deployment name; a bare ID belongs to `project` (projects/P)."""
    if "/" in text or project is None:
        return text
    return f"{project_name(project)}/deployments/{text}"


def _key_project(key: str) -> str | None:
    parsed = parse_key(key)
    return f"projects/{parsed.project}" if parsed else None


# commands ---------------------------------------------------------------------


def keys_create(client: Client, arguments: argparse.Namespace) -> int:
    deployments = [_deployment(d, arguments.project) for d in arguments.deployment or []]
    project = arguments.project
    if project is None:
        first = deployment_project(deployments[0]) if deployments else None
        if first is None:
            _usage_error(arguments, "give --project, or a first --deployment projects/P/…")
        project = f"projects/{first}"
    key = pb.ApiKey(
        display_name=arguments.display_name,
        description=arguments.description,
        deployments=deployments,
    )
    if arguments.expires and arguments.expires.at:
        key.expire_time.FromDatetime(arguments.expires.at)
    response = client.keys.CreateApiKey(
        pb.CreateApiKeyRequest(parent=project_name(project), api_key_id=arguments.id, api_key=key)
    )
    _print_secret(client, response, f"created {response.api_key.name}")
    return 0


def keys_list(client: Client, arguments: argparse.Namespace) -> int:
    parent = project_name(arguments.project)
    request = pb.ListApiKeysRequest(
        parent=parent,
        page_size=PAGE_SIZE,
        deployment=_deployment(arguments.deployment, parent) if arguments.deployment else "",
        show_deleted=arguments.all,
    )

    def pages() -> Iterator[pb.ListApiKeysResponse]:
        while True:
            page: pb.ListApiKeysResponse = client.keys.ListApiKeys(request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    row = "{:<40}  {:<24}  {:<30}  {:<20}  {:<7}  {}"
    header = row.format("NAME", "DISPLAY NAME", "DEPLOYMENTS", "EXPIRES", "STATE", "SECRET HINT")
    for number, page in enumerate(pages()):
        if number == 0 and not client.json:  # after the first answer: an error stands alone
            print(header, file=client.out)
        for key in page.api_keys:
            if client.json:
                client.emit(key)
                continue
            line = row.format(
                key.name,
                _shorten(key.display_name, 24),
                ",".join(d.rsplit("/", 1)[-1] for d in key.deployments) or "-",
                _expires(key),
                _state(key),
                key.secret_hint,
            )
            print(line.rstrip(), file=client.out, flush=True)
    return 0


def keys_get(client: Client, arguments: argparse.Namespace) -> int:
    _show(client, client.keys.GetApiKey(pb.GetApiKeyRequest(name=arguments.key)))
    return 0


def keys_update(client: Client, arguments: argparse.Namespace) -> int:
    key = pb.ApiKey(name=arguments.key, etag=arguments.etag)
    request = pb.UpdateApiKeyRequest(api_key=key)
    for field in ("display_name", "description"):
        if (value := getattr(arguments, field)) is not None:
            setattr(request.api_key, field, value)
            request.update_mask.paths.append(field)
    if arguments.expires is not None:
        if arguments.expires.at:
            request.api_key.expire_time.FromDatetime(arguments.expires.at)
        request.update_mask.paths.append("expire_time")  # and unset: never expires
    if not request.update_mask.paths:
        _usage_error(arguments, "nothing to change: give --name, --description or --expires")
    _show(client, client.keys.UpdateApiKey(request))
    return 0


def keys_attach_or_detach(client: Client, arguments: argparse.Namespace) -> int:
    method, request = {
        "attach": (client.keys.AttachDeployment, pb.AttachDeploymentRequest),
        "detach": (client.keys.DetachDeployment, pb.DetachDeploymentRequest),
    }[arguments.verb]
    deployment = _deployment(arguments.deployment, _key_project(arguments.key))
    _show(client, method(request(name=arguments.key, deployment=deployment, etag=arguments.etag)))
    return 0


def keys_delete(client: Client, arguments: argparse.Namespace) -> int:
    if not arguments.yes:
        if not sys.stdin.isatty():
            print(
                f"edgekeys: not deleting {arguments.key}: stdin is not a terminal, "
                "so confirm with --yes",
                file=sys.stderr,
            )
            return 2
        print(f"Delete {arguments.key}? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("edgekeys: not deleted", file=sys.stderr)
            return 1
    request = pb.DeleteApiKeyRequest(name=arguments.key, etag=arguments.etag)
    _show(client, client.keys.DeleteApiKey(request))
    return 0


def keys_rotate(client: Client, arguments: argparse.Namespace) -> int:
    request = pb.RotateApiKeyRequest(name=arguments.key, etag=arguments.etag)
    request.grace_period.FromTimedelta(arguments.grace)
    response = client.keys.RotateApiKey(request)
    until = response.api_key.previous_secret_expire_time
    old = f"the old one works until {utc_time(until)}" if until.seconds else "the old one no more"
    _print_secret(client, response, f"rotated {arguments.key}; {old}")
    return 0


def keys_lookup(client: Client, arguments: argparse.Namespace) -> int:
    _show(client, client.keys.LookupApiKey(pb.LookupApiKeyRequest(secret=read_secret())))
    return 0


def grace(text: str) -> timedelta:
    """30s, 45m, 24h or 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError(f"expected a number and s, m, h or d, not {text!r}")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


def keys_validate(client: Client, arguments: argparse.Namespace) -> int:
    request = vpb.ValidateApiKeyRequest(
        secret=arguments.secret or read_secret(), deployment=arguments.deployment
    )
    response = client.validation.ValidateApiKey(request)
    allowed = response.verdict == vpb.VERDICT_ALLOWED
    if client.json:
        client.emit(response)
    else:
        found = f"  {response.api_key}" if response.api_key else ""
        print(f"{vpb.Verdict.Name(response.verdict)}{found}", file=client.out)
    return 0 if allowed else 1


# shared by the commands -------------------------------------------------------


def read_secret() -> str:
    """A secret from stdin: typed without echo on a terminal, else its first line."""
    if sys.stdin.isatty():
        return getpass.getpass("secret: ")
    return sys.stdin.readline().strip()


def _print_secret(client: Client, response: Any, done: str) -> None:
    """The secret alone on stdout (`secret=$(edgekeys keys create …)` works), the
    warning on stderr; with --json the whole response."""
    if client.json:
        client.emit(response)
    else:
        print(response.secret, file=client.out, flush=True)
    print(
        f"edgekeys: {done}. This secret is shown once and only its digest is kept: copy it now.",
        file=sys.stderr,
    )


def _show(client: Client, response: Message) -> None:
    """A response holding `api_key`: protobuf JSON, or the key's fields one a line."""
    if client.json:
        client.emit(response)
        return
    key: pb.ApiKey = getattr(response, "api_key")  # noqa: B009 (every such response has one)
    fields = [
        ("name", key.name),
        ("display name", key.display_name),
        ("description", key.description),
        ("deployments", _INDENT.join(key.deployments) or "-"),
        ("expires", _expires(key)),
        ("state", _state(key)),
        ("secret hint", key.secret_hint),
        ("created", utc_time(key.create_time)),
        ("updated", utc_time(key.update_time)),
    ]
    if key.HasField("delete_time"):
        fields.append(("deleted", utc_time(key.delete_time)))
    if key.HasField("previous_secret_expire_time"):
        fields.append(("old secret to", utc_time(key.previous_secret_expire_time)))
    fields.append(
        ("last used", utc_time(key.last_use_time) if key.HasField("last_use_time") else "-")
    )
    fields.append(("etag", key.etag))
    for label, value in fields:
        print(f"{label + ':':<14} {value}".rstrip(), file=client.out)


_INDENT = "\n" + " " * 15  # under the value of the line above


def _expires(key: pb.ApiKey) -> str:
    return utc_time(key.expire_time) if key.HasField("expire_time") else "never"


def _state(key: pb.ApiKey) -> str:
    return pb.ApiKey.State.Name(key.state).removeprefix("STATE_")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
