"""Reading tab-separated files (plain or gzipped) with errors that name file, line and problem."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from kdmkb.services.errors import DataError

# C0 control characters but the tab, and DEL: never part of a name (a NUL or an escape would become one silently).
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def open_text(path: Path):
    """Opens ``path`` as UTF-8 text, transparently un-gzipping ``*.gz``; a leading byte-order mark is dropped (utf-8-sig)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def read_rows(
    path: Path, columns: int, *, extra_columns: bool = False, last_may_be_empty: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(line_number, fields)`` for every non-blank line.

    A row must have exactly ``columns`` fields; with ``extra_columns`` it may have more, which
    are dropped (vocabulary files may carry names or descriptions). With ``last_may_be_empty``
    the last field may be empty (an entity without a description). Raises :class:`DataError`
    on a wrong column count, an empty field, a control character, a non-UTF-8 byte or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    seen = False
    try:
        with open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                control = CONTROL.search(line)
                if control:
                    raise DataError(f"{path} line {number} column {control.start() + 1}: control character {control.group()!r}")
                fields = line.split("\t")
                if len(fields) != columns and not (extra_columns and len(fields) > columns):
                    expected = f"at least {columns}" if extra_columns else str(columns)
                    raise DataError(f"{path} line {number}: expected {expected} tab-separated columns, found {len(fields)}")
                fields = fields[:columns]
                if any(not field.strip() for field in (fields[:-1] if last_may_be_empty else fields)):
                    raise DataError(f"{path} line {number}: empty field")
                seen = True
                yield number, [field.strip() for field in fields]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason})") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    if not seen:
        raise DataError(f"{path}: file is empty")


def find_file(folder: Path, stem: str, *, required: bool = True) -> Path | None:
    """Returns ``folder/stem.tsv`` or ``folder/stem.tsv.gz``, whichever exists."""
    for candidate in (folder / f"{stem}.tsv", folder / f"{stem}.tsv.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise DataError(f"{folder}: missing {stem}.tsv (or {stem}.tsv.gz)")
    return None


def write_rows(path: Path, rows) -> None:
    """Writes rows of strings as TSV (gzipped when the name ends in .gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write("\t".join(row) + "\n")
