"""The layers of service/ are checked by import-linter (pyproject.toml), in `make lint`:
an import that points up a layer, out of projections/ or into the server from the CLI
breaks a contract."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
LAYERS = "service/ layers point down"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT, "--no-cache", "--config", tree / "pyproject.toml"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": ""},
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and their contracts, to break."""
    for package in ("service", "projections", "edgekeys"):
        shutil.copytree(ROOT / package, tmp_path / package)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_project_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("service/domain/names.py", "import service.write.keystore", LAYERS),
        ("service/storage/database.py", "import service.api.errors", LAYERS),
        ("service/write/writer.py", "import service.replication.feed", LAYERS),
        ("projections/index.py", "import service.write.keystore", "projections/ depend on"),
        ("service/cli/keys.py", "import service.runtime.config", "the CLI's client side uses"),
    ],
)
def test_an_import_the_wrong_way_breaks_a_contract(
    tree: Path, module: str, bad_import: str, contract: str
) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{bad_import}  # the wrong way\n")
    result = lint(tree)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert any(contract in line for line in broken), result.stdout
