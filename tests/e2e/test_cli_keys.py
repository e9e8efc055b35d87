"""`edgekeys keys …` against a real `edgekeys serve`: in-process through `main` for speed,
and through a real subprocess where the shell's view matters (stdout, stdin, exit code)."""

import io
import json
import os
import re
import subprocess
from typing import Any, NamedTuple

import pytest

from service.cli import keys as client_keys
from service.runtime.commands import main
from tests.e2e.conftest import BIN, ROOT, ServeProcess

LLAMA = "projects/acme/deployments/llama-3"
MISTRAL = "projects/acme/deployments/mistral"
SECRET = re.compile(r"edk_[0-9A-Za-z]{49}")


@pytest.fixture(scope="module")
def served(served_per_module: ServeProcess) -> ServeProcess:
    return served_per_module


class Result(NamedTuple):
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """`edgekeys ARGUMENTS` run in this process, against the served process."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *arguments: str, stdin: io.StringIO | None = None) -> Result:
        self.monkeypatch.setattr("sys.stdin", stdin or io.StringIO(""))
        try:
            code = main(list(arguments))
        except SystemExit as exit:  # argparse's usage errors
            code = int(exit.code or 0)
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def create(self, *arguments: str) -> dict[str, Any]:
        """A new key (deployed on LLAMA unless told): CreateApiKeyResponse as JSON."""
        if "--deployment" not in arguments and "--project" not in arguments:
            arguments = (*arguments, "--deployment", LLAMA)
        result = self("keys", "create", "--name", "Portal", *arguments, "--json")
        assert result.code == 0, result.err
        created: dict[str, Any] = result.json()
        return created


@pytest.fixture
def cli(
    served: ServeProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    monkeypatch.setenv("EDGEKEYS_SERVER", served.address)
    return Cli(capsys, monkeypatch)


class Terminal(io.StringIO):
    """Stdin as a person at a terminal typing `answer`."""

    def isatty(self) -> bool:
        return True


def edgekeys(served: ServeProcess, *arguments: str, stdin: str = "") -> Result:
    environment = {**os.environ, "EDGEKEYS_SERVER": served.address}
    result = subprocess.run(
        [str(BIN / "edgekeys"), *arguments],
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(result.returncode, result.stdout, result.stderr)


# create -----------------------------------------------------------------------


def test_create_prints_the_secret_alone_on_stdout_and_the_warning_on_stderr(
    served: ServeProcess,
) -> None:
    result = edgekeys(
        served, "keys", "create", "--name", "Portal", "--deployment", LLAMA, "--id", "shell-key"
    )
    assert result.code == 0, result.err
    assert SECRET.fullmatch(result.out.strip())
    assert result.out.count("\n") == 1
    assert "projects/acme/apiKeys/shell-key" in result.err
    assert "copy it now" in result.err
    allowed = edgekeys(served, "keys", "validate", "--deployment", LLAMA, stdin=result.out)
    assert (allowed.code, allowed.out.split()[0]) == (0, "VERDICT_ALLOWED")


def test_create_with_json_prints_the_whole_response_with_proto_field_names(cli: Cli) -> None:
    created = cli.create("--description", "back end", "--deployment", LLAMA)
    assert SECRET.fullmatch(created["secret"])
    key = created["api_key"]
    assert (key["display_name"], key["description"]) == ("Portal", "back end")
    assert key["deployments"] == [LLAMA]
    assert "expire_time" not in key  # never, by default


def test_a_date_means_midnight_utc_and_the_project_is_the_first_deployments(cli: Cli) -> None:
    created = cli.create(
        "--deployment", "projects/other/deployments/llama-3", "--expires", "2027-01-31"
    )
    key = created["api_key"]
    assert key["name"].startswith("projects/other/apiKeys/")
    assert key["expire_time"] == "2027-01-31T00:00:00Z"


def test_expires_takes_an_iso_time_or_never(cli: Cli) -> None:
    timed = cli.create("--expires", "2027-01-31T12:30:00+02:00")["api_key"]
    assert timed["expire_time"] == "2027-01-31T10:30:00Z"
    never = cli.create("--expires", "never")["api_key"]
    assert "expire_time" not in never


def test_short_deployments_belong_to_the_given_project(cli: Cli) -> None:
    created = cli.create(
        "--project", "projects/acme", "--deployment", "llama-3", "--deployment", "mistral"
    )
    assert created["api_key"]["deployments"] == [LLAMA, MISTRAL]
    no_deployment = cli.create("--project", "acme")["api_key"]
    assert no_deployment["name"].startswith("projects/acme/apiKeys/")
    assert "deployments" not in no_deployment


def test_create_without_a_project_to_go_by_is_a_usage_error(cli: Cli) -> None:
    for arguments in ([], ["--deployment", "llama-3"]):
        result = cli("keys", "create", "--name", "Portal", *arguments)
        assert result.code == 2
        assert result.err.startswith("usage: edgekeys keys create")
        assert "give --project" in result.err.splitlines()[-1]
        assert result.out == ""


# list -------------------------------------------------------------------------


def test_list_prints_a_table_of_every_page(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_keys, "PAGE_SIZE", 2)
    names = [
        cli.create("--deployment", "projects/paged/deployments/llama-3")["api_key"]["name"]
        for _ in range(5)
    ]
    result = cli("keys", "list", "projects/paged")
    assert result.code == 0, result.err
    header, *rows = result.out.splitlines()
    assert header.split() == [
        "NAME",
        "DISPLAY",
        "NAME",
        "DEPLOYMENTS",
        "EXPIRES",
        "STATE",
        "SECRET",
        "HINT",
    ]
    assert sorted(row.split()[0] for row in rows) == sorted(names)
    assert all(row.split()[1:5] == ["Portal", "llama-3", "never", "ACTIVE"] for row in rows)
    assert all(re.fullmatch(r"edk_\w{4}…\w{4}", row.split()[-1]) for row in rows)


def test_list_filters_by_deployment_and_all_includes_deleted_keys(cli: Cli) -> None:
    project = "projects/filtered"
    on_llama = cli.create("--deployment", f"{project}/deployments/llama-3")["api_key"]["name"]
    on_mistral = cli.create("--deployment", f"{project}/deployments/mistral")["api_key"]["name"]
    deleted = cli.create("--deployment", f"{project}/deployments/mistral")["api_key"]["name"]
    assert cli("keys", "delete", deleted, "--yes").code == 0

    def listed(*options: str) -> list[str]:
        result = cli("keys", "list", project, *options, "--json")
        assert result.code == 0, result.err
        return sorted(json.loads(line)["name"] for line in result.out.splitlines())

    assert listed() == sorted([on_llama, on_mistral])
    assert listed("--deployment", "mistral") == [on_mistral]
    assert listed("--deployment", f"{project}/deployments/llama-3") == [on_llama]
    assert listed("--all") == sorted([on_llama, on_mistral, deleted])


# get, update, attach, detach ----------------------------------------------------


def test_get_prints_the_key_and_json_anywhere_on_the_line_is_the_same(cli: Cli) -> None:
    name = cli.create("--deployment", LLAMA, "--deployment", MISTRAL)["api_key"]["name"]
    shown = cli("keys", "get", name)
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert lines[0].split() == ["name:", name]
    assert lines[3:5] == [f"deployments:   {LLAMA}", f"               {MISTRAL}"]
    assert "expires:       never" in lines
    outputs = {
        cli(*arguments).out
        for arguments in (
            ("--json", "keys", "get", name),
            ("keys", "--json", "get", name),
            ("keys", "get", "--json", name),
            ("keys", "get", name, "--json"),
        )
    }
    assert len(outputs) == 1
    assert json.loads(outputs.pop())["api_key"]["name"] == name


def test_update_changes_only_what_was_given(cli: Cli) -> None:
    created = cli.create("--description", "first", "--expires", "2027-01-31")["api_key"]
    name = created["name"]
    renamed = cli("keys", "update", name, "--name", "Renamed", "--json")
    assert renamed.code == 0, renamed.err
    key = renamed.json()["api_key"]
    assert (key["display_name"], key["description"]) == ("Renamed", "first")
    assert key["expire_time"] == "2027-01-31T00:00:00Z"
    cleared = cli("keys", "update", name, "--description", "", "--expires", "never", "--json")
    key = cleared.json()["api_key"]
    assert (key["display_name"], key.get("description", "")) == ("Renamed", "")
    assert "expire_time" not in key
    later = cli("keys", "update", name, "--expires", "2028-02-29", "--json").json()["api_key"]
    assert later["expire_time"] == "2028-02-29T00:00:00Z"


def test_update_with_nothing_to_change_is_a_usage_error(cli: Cli) -> None:
    result = cli("keys", "update", "projects/acme/apiKeys/whatever")
    assert result.code == 2
    assert result.err.splitlines()[-1].endswith(
        "nothing to change: give --name, --description or --expires"
    )


def test_a_stale_etag_is_refused_in_one_line(cli: Cli) -> None:
    key = cli.create()["api_key"]
    stale = key["etag"]
    assert cli("keys", "update", key["name"], "--name", "Changed", "--etag", stale).code == 0
    for arguments in (
        ("update", key["name"], "--name", "Again"),
        ("attach", key["name"], MISTRAL),
        ("detach", key["name"], LLAMA),
        ("delete", key["name"], "--yes"),
    ):
        refused = cli("keys", *arguments, "--etag", stale)
        assert refused.code == 1
        assert refused.err.startswith("edgekeys: ABORTED: ")
        assert refused.err.count("\n") == 1
        assert refused.out == ""


def test_attach_and_detach_take_a_full_or_a_short_deployment(cli: Cli) -> None:
    name = cli.create("--deployment", LLAMA)["api_key"]["name"]
    attached = cli("keys", "attach", name, "mistral", "--json")
    assert attached.json()["api_key"]["deployments"] == [LLAMA, MISTRAL]
    detached = cli("keys", "detach", name, LLAMA)
    assert detached.code == 0, detached.err
    assert f"deployments:   {MISTRAL}" in detached.out.splitlines()
    again = cli("keys", "get", name, "--json").json()["api_key"]
    assert again["deployments"] == [MISTRAL]


# delete -----------------------------------------------------------------------


def test_delete_asks_at_a_terminal_and_deletes_only_on_yes(cli: Cli) -> None:
    name = cli.create()["api_key"]["name"]
    declined = cli("keys", "delete", name, stdin=Terminal("n\n"))
    assert declined.code == 1
    assert declined.err.startswith(f"Delete {name}? [y/N] ")
    assert cli("keys", "get", name, "--json").json()["api_key"]["state"] == "STATE_ACTIVE"
    confirmed = cli("keys", "delete", name, stdin=Terminal("y\n"))
    assert confirmed.code == 0, confirmed.err
    assert "state:         DELETED" in confirmed.out.splitlines()


def test_delete_without_yes_refuses_when_stdin_is_not_a_terminal(served: ServeProcess) -> None:
    created = edgekeys(
        served, "keys", "create", "--name", "Portal", "--deployment", LLAMA, "--json"
    )
    name = json.loads(created.out)["api_key"]["name"]
    refused = edgekeys(served, "keys", "delete", name, stdin="y\n")
    assert refused.code == 2
    assert refused.err.splitlines() == [
        f"edgekeys: not deleting {name}: stdin is not a terminal, so confirm with --yes"
    ]
    deleted = edgekeys(served, "--json", "keys", "delete", name, "--yes")
    assert deleted.code == 0, deleted.err
    assert json.loads(deleted.out)["api_key"]["state"] == "STATE_DELETED"


# validate ---------------------------------------------------------------------


def test_validate_reads_the_secret_from_stdin_and_exits_0_only_when_allowed(cli: Cli) -> None:
    created = cli.create("--deployment", LLAMA)
    secret, name = created["secret"], created["api_key"]["name"]
    allowed = cli("keys", "validate", "--deployment", LLAMA, stdin=io.StringIO(secret + "\n"))
    assert (allowed.code, allowed.out.split()) == (0, ["VERDICT_ALLOWED", name])
    elsewhere = cli(
        "keys", "validate", "--deployment", MISTRAL, "--json", stdin=io.StringIO(secret)
    )
    assert elsewhere.code == 1
    assert elsewhere.json() == {"verdict": "VERDICT_DEPLOYMENT_NOT_ALLOWED", "api_key": name}
    malformed = cli("keys", "validate", "--deployment", LLAMA, "not-a-key")
    assert (malformed.code, malformed.out.strip()) == (1, "VERDICT_MALFORMED")


# errors -----------------------------------------------------------------------


def test_errors_are_one_line_with_exit_1_and_no_traceback(cli: Cli) -> None:
    unknown = cli("keys", "get", "projects/acme/apiKeys/no-such-key")
    assert unknown.err == "edgekeys: NOT_FOUND: projects/acme/apiKeys/no-such-key does not exist\n"
    bad_project = cli("keys", "list", "projects/Not_A_Project")
    assert bad_project.err.startswith("edgekeys: INVALID_ARGUMENT: parent: expected projects/")
    unreachable = cli("keys", "list", "projects/acme", "--server", "127.0.0.1:9")
    assert unreachable.err.startswith("edgekeys: cannot reach 127.0.0.1:9: ")
    for result in (unknown, bad_project, unreachable):
        assert (result.code, result.out, result.err.count("\n")) == (1, "", 1)
        assert "Traceback" not in result.err


def test_bad_arguments_get_the_usage_line_and_exit_2(cli: Cli) -> None:
    result = cli("keys", "create", "--name", "Portal", "--deployment", LLAMA, "--expires", "soon")
    assert result.code == 2
    assert result.err.startswith("usage: edgekeys keys create")
    assert result.err.splitlines()[-1].endswith("not a date or ISO time: 'soon'")


# the README ---------------------------------------------------------------------


def test_the_readme_command_line_tour_runs_as_it_stands(served: ServeProcess) -> None:
    section = (ROOT / "README.md").read_text().split("## Command line\n")[1].split("\n## ")[0]
    script = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(".venv/bin/", f"{BIN}/")],
        env={**os.environ, "EDGEKEYS_SERVER": served.address},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    row = r"projects/acme/apiKeys/portal-web +Portal \(web\) +llama-3,mistral +2027-01-31T00:00:00Z"
    assert re.search(row + " +ACTIVE +edk_", result.stdout)
    assert "VERDICT_ALLOWED  projects/acme/apiKeys/portal-web" in result.stdout
    assert "state:         DELETED" in result.stdout
    assert "Traceback" not in result.stderr


def test_rotate_prints_the_new_secret_once_and_lookup_reads_a_secret_from_stdin(
    cli: Cli,
) -> None:
    created = cli.create()
    name, old = created["api_key"]["name"], created["secret"]
    rotated = cli("keys", "rotate", name, "--grace", "24h")
    assert rotated.code == 0, rotated.err
    new = rotated.out.strip()
    assert SECRET.fullmatch(new) and new != old
    assert "the old one works until" in rotated.err and "copy it now" in rotated.err
    for secret in (old, new):  # the key behind either secret
        found = cli("keys", "lookup", "--json", stdin=io.StringIO(secret + "\n"))
        assert found.code == 0, found.err
        assert found.json()["api_key"]["name"] == name
    assert cli("keys", "validate", "--deployment", LLAMA, stdin=io.StringIO(old)).code == 0
    shown = cli("keys", "get", name)
    assert "old secret to:" in shown.out and "last used:" in shown.out
    too_long = cli("keys", "rotate", name, "--grace", "8d")
    assert too_long.code == 1 and "grace_period" in too_long.err
    assert cli("keys", "rotate", name, "--grace", "soon").code == 2


def test_client_commands_do_not_load_the_server() -> None:
    """`keys` and `audit` start quickly: no SQLAlchemy, event store or projections."""
    probe = (
        "import contextlib, sys\n"
        "from service.runtime.commands import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['keys', 'list', '--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('service.', 'projections'))))\n"
    )
    result = subprocess.run(
        [BIN / "python", "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    packages, ours = result.stdout.splitlines()[-2:]
    assert "sqlalchemy" not in packages and "psycopg" not in packages
    assert "prometheus_client" not in packages
    for server_side in (
        "service.runtime.server",
        "service.write",
        "service.storage",
        "projections",
    ):
        assert server_side not in ours
