"""Data roots: the only directories a server reads KB folders and alignment files from."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from kdmkb.services.errors import ConfigError, DataError


def real(path: str | Path) -> Path:
    """``path`` made absolute with every symbolic link that exists here followed."""
    return Path(os.path.realpath(path))


class DataRoots:
    """Directories every KB folder and alignment file must lie in once symlinks are followed.

    A relative path resolves against the first root. ``DataRoots(None)`` allows any path,
    relative to the working directory: for in-process use (tests, scripts); ``kdmkb serve``
    always names its roots. Refusals name only the path as the caller gave it, or paths inside
    a root, so they tell nothing about what lies outside.
    """

    def __init__(self, roots: Sequence[str | Path] | None = None) -> None:
        self.roots = None if roots is None else tuple(real(root) for root in roots)
        if self.roots == ():
            raise ConfigError("data roots: give at least one directory")

    def names(self) -> list[str] | None:
        """The roots as strings (what travels to a KB's worker), or None for anywhere."""
        return None if self.roots is None else [str(root) for root in self.roots]

    def contains(self, path: Path) -> bool:
        return self.roots is None or any(path == root or root in path.parents for root in self.roots)

    def resolve(self, path: str, field: str) -> Path:
        """``path`` resolved (relative: against the first root) and refused, naming ``field``, outside every root."""
        base = self.roots[0] if self.roots else Path.cwd()
        resolved = real(base / path)
        if not self.contains(resolved):
            raise ConfigError(f"{field}: {path!r} is not inside a data root ({', '.join(map(str, self.roots))})")
        return resolved

    def check_folder(self, folder: Path) -> None:
        """Refuses a folder that is not inside a root or holds a symlink leading out of every root (at any depth)."""
        if self.roots is None:
            return
        if not self.contains(real(folder)):
            raise DataError(f"{folder}: not inside a data root ({', '.join(map(str, self.roots))})")
        seen = set()
        for directory, subdirectories, files in os.walk(folder, followlinks=True):
            if real(directory) in seen:  # a link back up the tree
                subdirectories.clear()
                continue
            seen.add(real(directory))
            for name in (*subdirectories, *files):
                entry = Path(directory) / name
                if entry.is_symlink() and not self.contains(real(entry)):
                    raise DataError(f"{entry}: a symbolic link that leads out of the data roots")
