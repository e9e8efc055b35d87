"""The stubs in edgekeys/ (and the descriptor set with the protos' comments, which
/v1/openapi.json reads) are what `make protos` makes from protos/ today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTORS = "edgekeys/v1/descriptors.binpb"


def generated(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text() for p in (root / "edgekeys").rglob("*_pb2*.py*")
    }


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    protos = sorted(
        p.relative_to(ROOT / "protos") for p in (ROOT / "protos" / "edgekeys").rglob("*.proto")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            "--include_source_info",
            f"--descriptor_set_out={tmp_path / 'descriptors.binpb'}",
            *map(str, protos),
        ],
        check=True,
        cwd=ROOT / "protos",
    )
    fresh = generated(tmp_path)
    committed = generated(ROOT)
    assert len(fresh) == 3 * len(protos)
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    if (tmp_path / "descriptors.binpb").read_bytes() != (ROOT / DESCRIPTORS).read_bytes():
        stale.append(DESCRIPTORS)
    assert not stale, f"generated stubs are out of date with protos/ ({stale}): run `make protos`"
