"""The stubs in edgekeys/v1 are what `make protos` makes from protos/ today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    protos = sorted((ROOT / "protos" / "edgekeys" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    fresh = {p.name: p.read_text() for p in (tmp_path / "edgekeys" / "v1").iterdir()}
    committed = {
        p.name: p.read_text()
        for p in (ROOT / "edgekeys" / "v1").iterdir()
        if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    }
    assert len(fresh) == 3 * len(protos)
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"edgekeys/v1 is out of date with protos/ ({stale}): run `make protos`"
