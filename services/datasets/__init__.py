"""Small benchmark datasets shipped with kdmkb for the embedded demo (provenance in PROVENANCE.md)."""

from __future__ import annotations

from pathlib import Path

from kdmkb.services.errors import ConfigError

ROOT = Path(__file__).resolve().parent
NAMES = ("umls", "kinship", "nations")


def dataset_dir(name: str) -> Path:
    if name not in NAMES:
        raise ConfigError(f"dataset: unknown packaged dataset {name!r}; known: {', '.join(NAMES)}")
    return ROOT / name
