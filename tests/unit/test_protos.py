"""The committed generated code is what ``python -m kdmkb.protos.generate`` makes of the committed .proto files."""

from __future__ import annotations

from pathlib import Path

import pytest

import kdmkb.protos as protos
from kdmkb.protos.generate import generate, proto_files

ROOT = Path(protos.__file__).resolve().parent  # .../protos
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generated(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file() and path.name.endswith(SUFFIXES)}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("protos")
    generate(out)
    return _generated(out)


def test_every_proto_has_committed_code(regenerated):
    protos_found = {str(path.relative_to(ROOT)) for path in proto_files()}
    assert protos_found, "no .proto files found"
    expected = {proto.removesuffix(".proto") + suffix for proto in protos_found for suffix in SUFFIXES}
    assert set(regenerated) == expected
    assert set(_generated(ROOT)) == expected, "generated files without a .proto, or a .proto without generated files: run `make protos`"


def test_generated_code_is_up_to_date(regenerated):
    committed = _generated(ROOT)
    stale = sorted(name for name, content in regenerated.items() if committed.get(name) != content)
    assert not stale, f"stale generated code, run `make protos`: {', '.join(stale)}"


def test_regeneration_leaves_importable_packages(tmp_path):
    generate(tmp_path)
    for module in tmp_path.rglob("*_pb2.py"):
        package = module.parent
        while package != tmp_path:
            assert (package / "__init__.py").is_file(), package
            package = package.parent
