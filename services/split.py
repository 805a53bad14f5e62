"""Cuts one link-prediction dataset into several aligned KBs, following KD-MKB's protocol (COLING 2020, §4.1)."""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import tomli_w

from kdmkb.kb_worker.data import KnowledgeBase, load_kb
from kdmkb.services.config import KB_NAME_PATTERN
from kdmkb.services.errors import ConfigError
from kdmkb.services.tsv import find_file, write_rows

ALIGN_CHOICES = (
    '"co-occurring", "all", a fraction in (0, 1] of the co-occurring entities such as "0.5", '
    'or "co-occurring+F": the co-occurring entities and a fraction F in (0, 1] of the others, such as "co-occurring+0.2"'
)
EXTEND = "co-occurring+"
_RESERVED = {"alignments", "split.json"}


@dataclass(frozen=True)
class SplitSummary:
    """What :func:`split_dataset` wrote; ``pair_counts`` maps ``(a, b)`` to (aligned entities, aligned relations).

    ``carried`` lists the dataset's text and feature files copied unchanged into every KB folder
    (paths relative to it, such as ``features/image.npy``).
    """

    out_dir: Path
    kb_names: tuple[str, ...]
    train_counts: dict[str, int]
    pair_counts: dict[tuple[str, str], tuple[int, int]]
    carried: tuple[str, ...]


def parse_align(align: str) -> float | str | tuple[str, float]:
    """Returns "co-occurring", "all", a fraction in (0, 1], or ``(EXTEND, fraction)``; anything else is a :class:`ConfigError`."""
    if align in ("co-occurring", "all"):
        return align
    extend = isinstance(align, str) and align.startswith(EXTEND)
    try:
        fraction = float(align[len(EXTEND) :] if extend else align)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"align: invalid value {align!r}; expected {ALIGN_CHOICES}")
    return (EXTEND, fraction) if extend else fraction


def check_names(names: list[str] | None, kbs: int) -> tuple[str, ...]:
    """The KB names: kb1..kbN by default, otherwise ``names`` checked to be unique and filesystem-safe."""
    if names is None:
        return tuple(f"kb{i}" for i in range(1, kbs + 1))
    names = tuple(names)
    if len(names) != kbs:
        raise ConfigError(f"names: {len(names)} given for kbs={kbs}")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not KB_NAME_PATTERN.fullmatch(name) or "__" in name:
            raise ConfigError(
                f"names: {name!r} is not a safe KB name (letters, digits, '.', '_', '-'; "
                "starts with a letter or digit; at most 64 characters; no '__')"
            )
        if name.casefold() in _RESERVED:
            raise ConfigError(f"names: {name!r} is reserved")
        if name.casefold() in seen:
            raise ConfigError(f"names: {name!r} is given twice (names are compared case-insensitively)")
        seen.add(name.casefold())
    return names


def check_out_dir(out_dir: Path) -> None:
    """Refuses an ``out_dir`` that is a file or a non-empty directory."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"out_dir: {out_dir} already exists and is not an empty directory; refusing to overwrite")


def split_dataset(
    dataset_dir: Path,
    out_dir: Path,
    *,
    kbs: int,
    seed: int,
    align: str = "co-occurring",
    names: list[str] | None = None,
) -> SplitSummary:
    """Splits ``dataset_dir``'s train triples into ``kbs`` KBs under ``out_dir`` with pairwise alignments.

    Every check runs before anything is written; output is built in a temporary sibling
    directory and moved into place at the end, so a failure leaves ``out_dir`` untouched.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if isinstance(kbs, bool) or not isinstance(kbs, int) or kbs < 2:
        raise ConfigError(f"kbs: must be an integer >= 2, got {kbs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {seed!r}")
    rule = parse_align(align)
    kb_names = check_names(names, kbs)
    check_out_dir(out_dir)
    kb = load_kb(dataset_dir)
    if kbs > len(kb.train):
        raise ConfigError(f"kbs: {kbs} is more than the {len(kb.train)} train triples of {dataset_dir}")

    rng = np.random.default_rng(seed)
    parts = [np.sort(part) for part in np.array_split(rng.permutation(len(kb.train)), kbs)]
    trains = [kb.train[part] for part in parts]
    present = [np.bincount(train[:, [0, 2]].ravel(), minlength=len(kb.entities)) > 0 for train in trains]
    pairs = [(i, j, _aligned_entities(rule, present[i], present[j], rng)) for i, j in combinations(range(kbs), 2)]

    carried = _carried_files(dataset_dir)
    target = out_dir.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    try:
        _write(staging, kb, kb_names, trains, pairs, dataset_dir, carried)
        provenance = _provenance(dataset_dir, seed, align, kb_names, trains, present, pairs, len(kb.relations), carried)
        (staging / "split.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(staging, target)
        except OSError as error:
            raise ConfigError(f"out_dir: cannot move the split into {out_dir} ({error.strerror})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SplitSummary(
        out_dir=out_dir,
        kb_names=kb_names,
        train_counts={name: len(train) for name, train in zip(kb_names, trains)},
        pair_counts={(kb_names[i], kb_names[j]): (len(aligned), len(kb.relations)) for i, j, aligned in pairs},
        carried=carried,
    )


def _carried_files(dataset_dir: Path) -> tuple[str, ...]:
    """The dataset's text files and every file of its ``features/`` folder, relative to ``dataset_dir``.

    Each split KB keeps the full vocabulary (see :func:`_write`), so these stay valid copied as they are.
    """
    texts = [find_file(dataset_dir, stem, required=False) for stem in ("entity_text", "relation_text")]
    features = sorted(path for path in (dataset_dir / "features").rglob("*") if path.is_file())
    return tuple(path.relative_to(dataset_dir).as_posix() for path in [*texts, *features] if path is not None)


def _sample(ids: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``round(fraction * len(ids))`` of ``ids`` (at least one), drawn without replacement."""
    keep = max(1, math.floor(fraction * len(ids) + 0.5))
    return rng.choice(ids, size=keep, replace=False)


def _aligned_entities(rule: float | str | tuple[str, float], left: np.ndarray, right: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Entity ids aligned between two KBs (ascending), given their train-entity masks."""
    if rule == "all":
        return np.arange(len(left))
    shared = left & right
    if isinstance(rule, tuple):  # the paper's Figures 3-4: co-occurring, then +F of the rest, up to all
        rest = np.flatnonzero(~shared)
        extra = _sample(rest, rule[1], rng) if len(rest) else rest
        return np.sort(np.concatenate([np.flatnonzero(shared), extra]))
    shared = np.flatnonzero(shared)
    if rule == "co-occurring" or len(shared) == 0:
        return shared
    return np.sort(_sample(shared, rule, rng))


def _write(root: Path, kb: KnowledgeBase, kb_names, trains, pairs, dataset_dir: Path, carried) -> None:
    """Writes every KB folder (with copies of the ``carried`` files) and the alignment files under ``root``."""
    entities, relations = kb.entities.names, kb.relations.names

    def named(triples: np.ndarray):
        return ((entities[h], relations[r], entities[t]) for h, r, t in triples.tolist())

    for index, (name, train) in enumerate(zip(kb_names, trains)):
        folder = root / name
        folder.mkdir()
        write_rows(folder / "train.tsv", named(train))
        # The peers' train triples are true facts too: evaluation filters them (never trains on them).
        write_rows(folder / "known.tsv", named(np.concatenate([t for other, t in enumerate(trains) if other != index])))
        write_rows(folder / "valid.tsv", named(kb.valid))
        write_rows(folder / "test.tsv", named(kb.test))
        write_rows(folder / "entities.tsv", ((e,) for e in entities))
        write_rows(folder / "relations.tsv", ((r,) for r in relations))
        for relative in carried:
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dataset_dir / relative, folder / relative)
    (root / "alignments").mkdir()
    for i, j, aligned in pairs:
        stem = root / "alignments" / f"{kb_names[i]}__{kb_names[j]}"
        write_rows(stem.with_name(stem.name + ".entities.tsv"), ((entities[e], entities[e]) for e in aligned.tolist()))
        write_rows(stem.with_name(stem.name + ".relations.tsv"), ((r, r) for r in relations))


def _provenance(dataset_dir: Path, seed, align, kb_names, trains, present, pairs, relation_count: int, carried) -> dict:
    """The content of ``split.json``.

    Per pair, ``share`` is the fraction of the entities seen in either KB's train triples that
    are aligned (the figure KD-MKB quotes: ~64% for WN18RR halves); ``coverage`` gives the same
    fraction relative to each KB's own train entities.
    """
    pair_records = []
    for i, j, aligned in pairs:
        mask = np.zeros(len(present[i]), dtype=bool)
        mask[aligned] = True
        union = present[i] | present[j]
        pair_records.append(
            {
                "kbs": [kb_names[i], kb_names[j]],
                "aligned_entities": int(len(aligned)),
                "aligned_relations": relation_count,
                "share": _ratio(mask & union, union),
                "coverage": {kb_names[k]: _ratio(mask & present[k], present[k]) for k in (i, j)},
            }
        )
    return {
        "source": str(dataset_dir.resolve()),
        "seed": seed,
        "kbs": len(kb_names),
        "align": align,
        "kb_names": list(kb_names),
        "train_counts": {name: len(train) for name, train in zip(kb_names, trains)},
        "pairs": pair_records,
        "carried": list(carried),
    }


def _ratio(part: np.ndarray, whole: np.ndarray) -> float:
    total = int(whole.sum())
    return round(int(part.sum()) / total, 6) if total else 0.0


def job_file_dict(summary: SplitSummary, *, strategy: str = "cooperative", worker_type: str = "transe", worker_settings: dict | None = None, job: dict | None = None, relative: bool = True) -> dict:
    """A job file for the split's KBs and alignments (paths relative to ``out_dir`` or absolute)."""
    root = Path(".") if relative else summary.out_dir.resolve()
    return {
        "strategy": strategy,
        "job": dict(job or {}),
        "kb": [{"name": name, "data": str(root / name), "worker_type": worker_type, "settings": dict(worker_settings or {})} for name in summary.kb_names],
        "alignment": [
            {"kbs": [a, b], "entities": str(root / "alignments" / f"{a}__{b}.entities.tsv"), "relations": str(root / "alignments" / f"{a}__{b}.relations.tsv")}
            for a, b in summary.pair_counts
        ],
    }


def write_job_file(summary: SplitSummary, *, effective: bool = False, **options) -> Path:
    """Writes ``job.toml`` next to the split so that ``kdmkb run OUT/job.toml`` runs it.

    ``effective`` writes every setting out with its default (job, strategy, worker type), so a
    reader sees what will run and what can be changed; otherwise only those given in ``options``.
    """
    from kdmkb.services.config import JobFile, validate

    raw = job_file_dict(summary, **options)
    path = summary.out_dir / "job.toml"
    path.write_text(tomli_w.dumps(validate(JobFile, raw).filled() if effective else raw), encoding="utf-8")
    return path
