"""The installed distribution exposes the repository's rooms under the one ``kdmkb`` namespace."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("services", "kb_worker", "coordinator", "protos")
# deploy/ holds no code: it is installed as kdmkb.deploy for its data (the monitoring configuration).
PACKAGE_FOLDERS = (*ROOMS, "deploy")
BARE_IMPORT = re.compile(rf"^\s*(from|import) ({'|'.join(ROOMS)})(\.|\s|$)", re.MULTILINE)


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_kdmkb():
    config = _setuptools()
    mapping = config["package-dir"]
    assert set(mapping) == {"kdmkb", *(f"kdmkb.{room}" for room in PACKAGE_FOLDERS)}
    found = {"kdmkb"}
    for room in PACKAGE_FOLDERS:
        for init in (ROOT / room).rglob("__init__.py"):
            found.add(".".join(("kdmkb", room, *init.parent.relative_to(ROOT / room).parts)))
    assert set(config["packages"]) == found, "pyproject.toml [tool.setuptools] packages must list every package folder"


def test_no_code_imports_a_room_by_its_bare_name():
    offenders = []
    for folder in (*ROOMS, "kdmkb", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if BARE_IMPORT.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"import these as kdmkb.<room>: {offenders}"
