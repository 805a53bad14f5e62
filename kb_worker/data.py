"""Loading one KB folder (train/valid/test triples and an optional vocabulary) into id arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdmkb.services.errors import DataError
from kdmkb.services.tsv import find_file, read_rows

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Vocabulary:
    """Names of entities or relations and their local ids (row numbers)."""

    names: tuple[str, ...]
    index: dict[str, int] = field(repr=False, compare=False)

    @classmethod
    def of(cls, names) -> "Vocabulary":
        names = tuple(names)
        return cls(names, {name: i for i, name in enumerate(names)})

    def __len__(self) -> int:
        return len(self.names)

    def ids(self, names, *, what: str) -> np.ndarray:
        """Local ids of ``names``; an unknown name raises :class:`DataError` naming it."""
        try:
            return np.fromiter((self.index[n] for n in names), dtype=np.int64, count=len(names))
        except KeyError as error:
            raise DataError(f"unknown {what} {error.args[0]!r}") from None


@dataclass(frozen=True)
class KnowledgeBase:
    """A KB's triples as ``int64 [n, 3]`` arrays of (head, relation, tail) local ids."""

    entities: Vocabulary
    relations: Vocabulary
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    # True triples from known.tsv that the KB never trains on, only filters rankings with (a split
    # KB's evaluation filters the facts its peers hold, as the full dataset's protocol does).
    filter_only: np.ndarray = field(default_factory=lambda: np.empty((0, 3), dtype=np.int64))

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def known_triples(self) -> np.ndarray:
        """Every true triple the KB knows (train, valid, test, known.tsv): the filter of filtered ranking."""
        return np.concatenate([self.train, self.valid, self.test, self.filter_only])


def contains_sorted(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Whether each of ``keys`` is in ``sorted_keys`` (a sorted 1-d tensor): membership by binary search."""
    position = torch.searchsorted(sorted_keys, keys).clamp(max=sorted_keys.numel() - 1)
    return sorted_keys[position] == keys


def read_vocabulary(path: Path, what: str) -> Vocabulary:
    """Reads the first column of a vocabulary file; duplicates are an error."""
    names: list[str] = []
    first_line: dict[str, int] = {}
    for number, (name,) in read_rows(path, 1, extra_columns=True):
        if name in first_line:
            raise DataError(f"{path} line {number}: duplicate {what} {name!r} (first on line {first_line[name]})")
        first_line[name] = number
        names.append(name)
    return Vocabulary.of(names)


def read_triples(path: Path) -> list[tuple[int, list[str]]]:
    return list(read_rows(path, 3))


def _to_ids(path: Path, rows, entities: Vocabulary, relations: Vocabulary) -> np.ndarray:
    out = np.empty((len(rows), 3), dtype=np.int64)
    for i, (number, (head, relation, tail)) in enumerate(rows):
        for column, (name, vocabulary, what) in enumerate(
            ((head, entities, "entity"), (relation, relations, "relation"), (tail, entities, "entity"))
        ):
            local = vocabulary.index.get(name)
            if local is None:
                raise DataError(f"{path} line {number}: unknown {what} {name!r} (not in the KB's vocabulary)")
            out[i, column] = local
    return out


def load_kb(folder: Path | str) -> KnowledgeBase:
    """Loads a KB folder; raises :class:`DataError` naming file, line and problem.

    An optional ``known.tsv`` lists more true triples that only filter rankings. With
    ``entities.tsv`` / ``relations.tsv`` present, every id in the triples must be listed there. Without them, the vocabulary is every id seen in train, valid and test, in order of
    first appearance.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: KB folder not found")
    paths = {split: find_file(folder, split) for split in SPLITS}
    rows = {split: read_triples(path) for split, path in paths.items()}
    entity_file = find_file(folder, "entities", required=False)
    relation_file = find_file(folder, "relations", required=False)
    entities = read_vocabulary(entity_file, "entity") if entity_file else None
    relations = read_vocabulary(relation_file, "relation") if relation_file else None
    if entities is None or relations is None:
        seen_entities: dict[str, None] = {}
        seen_relations: dict[str, None] = {}
        for split in SPLITS:
            for _, (head, relation, tail) in rows[split]:
                seen_entities.setdefault(head)
                seen_entities.setdefault(tail)
                seen_relations.setdefault(relation)
        entities = entities or Vocabulary.of(seen_entities)
        relations = relations or Vocabulary.of(seen_relations)
    arrays = {split: _to_ids(paths[split], rows[split], entities, relations) for split in SPLITS}
    known_file = find_file(folder, "known", required=False)
    if known_file:
        arrays["filter_only"] = _to_ids(known_file, read_triples(known_file), entities, relations)
    return KnowledgeBase(entities, relations, **arrays)
