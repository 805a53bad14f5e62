"""Loading one KB folder into id arrays, with the texts and feature matrices richer worker types read.

The folder layout (required and optional files, row order, missing rows) is in ``docs/data.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdmkb.services.errors import DataError
from kdmkb.services.limits import Limits
from kdmkb.services.tsv import find_file, read_rows

SPLITS = ("train", "valid", "test")
MODALITY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


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
class EntityTexts:
    """Names and descriptions from ``entity_text.tsv``, indexed by local entity id.

    An entity without a row has empty strings and ``present[id]`` False, so a text model can
    tell "no text" from "empty description".
    """

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    present: np.ndarray  # bool [num_entities]


@dataclass(frozen=True)
class RelationTexts:
    """Texts from ``relation_text.tsv``, indexed by local relation id (empty where ``present`` is False)."""

    texts: tuple[str, ...]
    present: np.ndarray  # bool [num_relations]


@dataclass(frozen=True)
class Features:
    """One modality's ``features/<modality>.npy`` as ``float32 [num_entities, d]`` rows in local id order.

    An entity without a row has zeros (never random values) and ``present[id]`` False.
    """

    values: np.ndarray
    present: np.ndarray  # bool [num_entities]


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
    # What text and multimodal worker types read; a KB folder without these files has none.
    entity_text: EntityTexts | None = None
    relation_text: RelationTexts | None = None
    features: dict[str, Features] = field(default_factory=dict)  # by modality name

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def known_triples(self) -> np.ndarray:
        """Every true triple the KB knows (train, valid, test, known.tsv): the filter of filtered ranking."""
        return np.concatenate([self.train, self.valid, self.test, self.filter_only])


class ShuffledPasses:
    """Batches of row ids, ``batch_size`` at a time, from passes over ``num_rows`` rows, each pass in a fresh random order.

    A pass's last rows, too few for a batch, wait for no one: the next batch starts a new pass.
    The orders come from ``generator`` (default: torch's global one).
    """

    def __init__(self, num_rows: int, batch_size: int, generator: torch.Generator | None = None) -> None:
        self.num_rows = num_rows
        self.batch_size = min(batch_size, num_rows)
        self.generator = generator
        self.restart()

    def restart(self) -> None:
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = self.num_rows

    def next(self) -> torch.Tensor:
        if self._cursor + self.batch_size > len(self._order):
            self._order = torch.randperm(self.num_rows, generator=self.generator)
            self._cursor = 0
        batch = self._order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return batch

    def state(self) -> dict:
        """Where the pass stands (and its own generator, when it has one), for a checkpoint."""
        state = {"order": self._order, "cursor": self._cursor}
        return state if self.generator is None else {**state, "generator": self.generator.get_state()}

    def restore(self, state: dict) -> None:
        self._order, self._cursor = state["order"], int(state["cursor"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])


def contains_sorted(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Whether each of ``keys`` is in ``sorted_keys`` (a sorted 1-d tensor): membership by binary search."""
    position = torch.searchsorted(sorted_keys, keys).clamp(max=sorted_keys.numel() - 1)
    return sorted_keys[position] == keys


def unique_rows(path: Path, rows, what: str):
    """Passes ``(line_number, fields)`` rows through, refusing a first field already seen on an earlier line."""
    first_line: dict[str, int] = {}
    for number, fields in rows:
        name = fields[0]
        if name in first_line:
            raise DataError(f"{path} line {number}: duplicate {what} {name!r} (first on line {first_line[name]})")
        first_line[name] = number
        yield number, fields


def read_vocabulary(path: Path, what: str) -> Vocabulary:
    """Reads the first column of a vocabulary file; duplicates are an error."""
    return Vocabulary.of(name for _, (name,) in unique_rows(path, read_rows(path, 1, extra_columns=True), what))


def _local_id(path: Path, number: int, name: str, vocabulary: Vocabulary, what: str) -> int:
    local = vocabulary.index.get(name)
    if local is None:
        raise DataError(f"{path} line {number}: unknown {what} {name!r} (not in the KB's vocabulary)")
    return local


def read_triples(path: Path) -> list[tuple[int, list[str]]]:
    return list(read_rows(path, 3))


def _to_ids(path: Path, rows, entities: Vocabulary, relations: Vocabulary) -> np.ndarray:
    out = np.empty((len(rows), 3), dtype=np.int64)
    for i, (number, (head, relation, tail)) in enumerate(rows):
        for column, (name, vocabulary, what) in enumerate(
            ((head, entities, "entity"), (relation, relations, "relation"), (tail, entities, "entity"))
        ):
            out[i, column] = _local_id(path, number, name, vocabulary, what)
    return out


def _read_keyed(path: Path, columns: int, vocabulary: Vocabulary, what: str, **options) -> list[tuple[int, list[str]]]:
    """``(local id, fields)`` per row of a file whose first column names one of the KB's ids, each id once."""
    rows = unique_rows(path, read_rows(path, columns, **options), what)
    return [(_local_id(path, number, fields[0], vocabulary, what), fields) for number, fields in rows]


def _read_texts(path: Path, vocabulary: Vocabulary, what: str, columns: int, **options) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The text columns after the id, each indexed by local id (empty for ids without a row), and the mask of ids with one."""
    texts = [[""] * len(vocabulary) for _ in range(columns - 1)]
    present = np.zeros(len(vocabulary), dtype=bool)
    for local, fields in _read_keyed(path, columns, vocabulary, what, **options):
        for column, text in zip(texts, fields[1:]):
            column[local] = text
        present[local] = True
    return [tuple(column) for column in texts], present


def read_entity_text(folder: Path, entities: Vocabulary) -> EntityTexts | None:
    """The folder's ``entity_text.tsv`` (id, name, description that may be empty), if it has one."""
    path = find_file(folder, "entity_text", required=False)
    if path is None:
        return None
    (names, descriptions), present = _read_texts(path, entities, "entity", 3, last_may_be_empty=True)
    return EntityTexts(names, descriptions, present)


def read_relation_text(folder: Path, relations: Vocabulary) -> RelationTexts | None:
    """The folder's ``relation_text.tsv`` (id, text), if it has one."""
    path = find_file(folder, "relation_text", required=False)
    if path is None:
        return None
    (texts,), present = _read_texts(path, relations, "relation", 2)
    return RelationTexts(texts, present)


def read_features(folder: Path, entities: Vocabulary, entity_file: Path | None) -> dict[str, Features]:
    """Every ``features/<modality>.npy`` of a KB folder, by modality; other files there are ignored.

    A ``<modality>.entities.tsv`` without its ``.npy`` is refused: it most likely means a misnamed
    matrix, whose rows would otherwise silently fall back to the order of ``entities.tsv``.
    """
    directory = folder / "features"
    if not directory.exists():
        return {}
    if not directory.is_dir():
        raise DataError(f"{directory}: expected a folder of <modality>.npy feature matrices")
    features: dict[str, Features] = {}
    for path in sorted(directory.iterdir()):
        if path.name.endswith(".npy"):
            modality = path.name[: -len(".npy")]
            if not MODALITY_PATTERN.fullmatch(modality):
                raise DataError(f"{path}: {modality!r} is not a modality name (letters, digits, '_', '-'; starts with a letter or digit)")
            features[modality] = _read_matrix(path, modality, entities, entity_file)
        elif path.name.endswith((".entities.tsv", ".entities.tsv.gz")):
            modality = path.name.split(".entities.tsv")[0]
            if not (directory / f"{modality}.npy").is_file():
                raise DataError(f"{path}: no {modality}.npy next to it for its rows to name")
    return features


def _read_matrix(path: Path, modality: str, entities: Vocabulary, entity_file: Path | None) -> Features:
    """One feature matrix, its rows moved to their entities' local ids (see :func:`read_features`)."""
    try:
        with path.open("rb") as handle:
            array = np.lib.format.read_array(handle, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: cannot read as a .npy array ({error})") from None
    if array.ndim != 2 or array.shape[1] == 0:
        raise DataError(f"{path}: expected a 2-D array [rows, d] with d >= 1, found shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected float or integer values, found dtype {array.dtype}")
    row_file = find_file(path.parent, f"{modality}.entities", required=False)
    if row_file:
        rows = _read_keyed(row_file, 1, entities, "entity")
        if len(rows) != len(array):
            raise DataError(f"{row_file}: lists {len(rows)} entities but {path.name} has {len(array)} rows")
        ids = np.array([local for local, _ in rows], dtype=np.int64)
    elif entity_file is None or len(entities) != len(array):
        order = "the KB has no entities.tsv" if entity_file is None else f"{entity_file.name} lists {len(entities)} entities"
        raise DataError(
            f"{path}: {len(array)} rows and {order}; add {modality}.entities.tsv next to it naming the entity of each row, one id per line"
        )
    else:
        ids = np.arange(len(entities))
    values = np.zeros((len(entities), array.shape[1]), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        values[ids] = array
    finite = np.isfinite(values[ids]).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError(f"{path} row {row} (entity {entities.names[ids[row]]!r}): NaN or infinite value (or too large for float32)")
    present = np.zeros(len(entities), dtype=bool)
    present[ids] = True
    return Features(values, present)


def load_kb(folder: Path | str, limits: Limits | None = None) -> KnowledgeBase:
    """Loads a KB folder; raises :class:`DataError` naming file, line and problem.

    An optional ``known.tsv`` lists more true triples that only filter rankings. With
    ``entities.tsv`` / ``relations.tsv`` present, every id in the triples must be listed there. Without them, the vocabulary is every id seen in train, valid and test, in order of
    first appearance. Optional ``entity_text.tsv``, ``relation_text.tsv`` and ``features/*.npy``
    are checked against that vocabulary and placed by local id (``docs/data.md``). ``limits``
    (a server's) bound each triple file's bytes and triples.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: KB folder not found")
    limits = limits or Limits()

    def read_limited(path: Path) -> list[tuple[int, list[str]]]:
        limits.check_file(path, size=path.stat().st_size)
        rows = read_triples(path)
        limits.check_file(path, triples=len(rows))
        return rows

    paths = {split: find_file(folder, split) for split in SPLITS}
    rows = {split: read_limited(path) for split, path in paths.items()}
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
        arrays["filter_only"] = _to_ids(known_file, read_limited(known_file), entities, relations)
    return KnowledgeBase(
        entities,
        relations,
        **arrays,
        entity_text=read_entity_text(folder, entities),
        relation_text=read_relation_text(folder, relations),
        features=read_features(folder, entities, entity_file),
    )
