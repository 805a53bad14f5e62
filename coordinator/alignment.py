"""Pairwise alignments between KBs, merged into equivalence classes with global alignment ids."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kdmkb.kb_worker.alignment_view import AlignmentView
from kdmkb.services.errors import DataError
from kdmkb.services.tsv import read_rows

KINDS = ("entity", "relation")


@dataclass(frozen=True)
class PairAlignment:
    """Name pairs aligning ``kb_a`` with ``kb_b``, for entities and relations."""

    kb_a: str
    kb_b: str
    entities: tuple[tuple[str, str], ...]
    relations: tuple[tuple[str, str], ...]
    entities_path: str = ""
    relations_path: str = ""

    def pairs(self, kind: str) -> tuple[tuple[str, str], ...]:
        return self.entities if kind == "entity" else self.relations


def read_pairs(path: Path, kind: str, kb_a: str, kb_b: str, vocab_a: set[str], vocab_b: set[str]) -> tuple[tuple[str, str], ...]:
    """Reads ``name_a<TAB>name_b`` lines; unknown names, duplicates and one-to-many pairs are errors."""
    pairs: list[tuple[str, str]] = []
    first_a: dict[str, tuple[int, str]] = {}
    first_b: dict[str, tuple[int, str]] = {}
    for number, (name_a, name_b) in read_rows(Path(path), 2):
        for name, vocabulary, kb in ((name_a, vocab_a, kb_a), (name_b, vocab_b, kb_b)):
            if name not in vocabulary:
                raise DataError(f"{path} line {number}: {kind} {name!r} is not in KB {kb!r}")
        for name, other, seen, kb in ((name_a, name_b, first_a, kb_a), (name_b, name_a, first_b, kb_b)):
            if name in seen:
                line, partner = seen[name]
                problem = "duplicate pair" if partner == other else f"{kind} {name!r} of KB {kb!r} is already aligned with {partner!r}"
                raise DataError(f"{path} line {number}: {problem} (first on line {line})")
            seen[name] = (number, other)
        pairs.append((name_a, name_b))
    return tuple(pairs)


def identical_pairs(vocab_a: list[str], vocab_b: set[str]) -> tuple[tuple[str, str], ...]:
    return tuple((name, name) for name in vocab_a if name in vocab_b)


def build_pair(kb_a: str, kb_b: str, vocab_a: dict[str, list[str]], vocab_b: dict[str, list[str]], entities_path: str = "", relations_path: str = "") -> PairAlignment:
    """Validates and reads one pairwise alignment (identical names where no file is given)."""
    if kb_a == kb_b:
        raise DataError(f"an alignment needs two different KBs; got {kb_a!r} twice")
    result = {}
    for kind, path in (("entity", entities_path), ("relation", relations_path)):
        names_a, names_b = set(vocab_a[kind]), set(vocab_b[kind])
        pairs = read_pairs(Path(path), kind, kb_a, kb_b, names_a, names_b) if path else identical_pairs(vocab_a[kind], names_b)
        result[kind] = pairs
    if not result["entity"]:
        raise DataError(f"alignment {kb_a!r} <-> {kb_b!r} aligns no entity: nothing could be distilled")
    return PairAlignment(kb_a, kb_b, result["entity"], result["relation"], entities_path, relations_path)


@dataclass
class _UnionFind:
    parent: dict = field(default_factory=dict)

    def find(self, node):
        self.parent.setdefault(node, node)
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a, b) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def merge(kbs: list[str], pairs: list[PairAlignment]) -> dict[str, AlignmentView]:
    """Each KB's view of the merged alignment among ``kbs``.

    Classes of aligned (kb, name) nodes get alignment ids 0, 1, ... in a deterministic order.
    A class holding two names of the same KB would let soft labels confuse them, so it is an
    error that names both.
    """
    members = set(kbs)
    views: dict[str, AlignmentView] = {kb: AlignmentView() for kb in kbs}
    for kind in KINDS:
        union = _UnionFind()
        for pair in pairs:
            if pair.kb_a in members and pair.kb_b in members:
                for name_a, name_b in pair.pairs(kind):
                    union.union((pair.kb_a, name_a), (pair.kb_b, name_b))
        classes: dict = defaultdict(list)
        for node in union.parent:
            classes[union.find(node)].append(node)
        for aid, root in enumerate(sorted(classes)):
            nodes = sorted(classes[root])
            by_kb: dict[str, str] = {}
            for kb, name in nodes:
                if kb in by_kb:
                    raise DataError(f"the alignments make {kind}s {by_kb[kb]!r} and {name!r} of KB {kb!r} the same {kind}")
                by_kb[kb] = name
            for kb, name in by_kb.items():
                getattr(views[kb], "entities" if kind == "entity" else "relations")[name] = aid
                for peer in by_kb:
                    if peer != kb:
                        shared = views[kb].peers.setdefault(peer, ([], []))
                        shared[0 if kind == "entity" else 1].append(aid)
    return views
