"""Regenerates the Python code of every .proto under protos/ (the one command: ``python -m kdmkb.protos.generate``)."""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
# Protos are compiled from protos/ so that each file keeps its canonical name
# (kdmkb/coordinator/v1/coordinator.proto); protoc then writes imports of ``kdmkb.<package>``,
# which :data:`IMPORT` rewrites to the package they are installed as, ``kdmkb.protos.kdmkb``.
IMPORT = re.compile(rb"^from kdmkb\.", re.MULTILINE)
INSTALLED = b"from kdmkb.protos.kdmkb."


def proto_files() -> list[Path]:
    return sorted(ROOT.rglob("*.proto"))


def generate(out_dir: Path = ROOT) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py mirrored under ``out_dir`` (default: in place)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    for proto in proto_files():
        relative = proto.relative_to(ROOT)
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(relative),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {relative}")
    for module in out_dir.rglob("*_pb2*.py*"):
        module.write_bytes(IMPORT.sub(INSTALLED, module.read_bytes()))
    for module in out_dir.rglob("*_pb2.py"):
        package = module.parent
        while package != out_dir:
            (package / "__init__.py").touch()
            package = package.parent


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
