"""Splitting one dataset into aligned KBs (KD-MKB §4.1): partition, alignment rules, provenance, no partial output."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

import kdmkb.services as services
import kdmkb.services.split as split_module
from kdmkb.kb_worker.data import load_kb
from kdmkb.services.errors import ConfigError, DataError
from kdmkb.services.split import split_dataset

UMLS = Path(services.__file__).parent / "datasets" / "umls"
WN18RR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wn18rr"


def rows(path: Path) -> list[tuple[str, ...]]:
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write(path: Path, lines) -> None:
    path.write_text("".join("\t".join(line) + "\n" for line in lines), encoding="utf-8")


def make_dataset(folder: Path, *, train: int = 40, entities: int = 12, relations: int = 3, seed: int = 0) -> Path:
    """A small random dataset (no duplicate train triples) without vocabulary files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    triples: set[tuple[str, str, str]] = set()
    while len(triples) < train:
        h, t = rng.integers(entities, size=2)
        triples.add((f"e{h}", f"r{rng.integers(relations)}", f"e{t}"))
    write(folder / "train.tsv", sorted(triples))
    write(folder / "valid.tsv", [("e0", "r0", "e1"), ("e2", "r1", "e3")])
    write(folder / "test.tsv", [("e4", "r2", "e5"), ("e1", "r0", "e0")])
    return folder


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def train_entities(kb_dir: Path) -> set[str]:
    return {name for h, _, t in rows(kb_dir / "train.tsv") for name in (h, t)}


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


def test_parts_partition_train_exactly(dataset, tmp_path):
    summary = split_dataset(dataset, tmp_path / "out", kbs=3, seed=7)
    source = Counter(rows(dataset / "train.tsv"))
    parts = [rows(tmp_path / "out" / name / "train.tsv") for name in summary.kb_names]
    assert summary.kb_names == ("kb1", "kb2", "kb3")
    assert sum((Counter(part) for part in parts), Counter()) == source
    assert sorted(len(part) for part in parts) == [13, 13, 14]
    assert summary.train_counts == {name: len(part) for name, part in zip(summary.kb_names, parts)}


def test_same_seed_gives_identical_bytes(dataset, tmp_path):
    split_dataset(dataset, tmp_path / "a", kbs=3, seed=11, align="0.5")
    split_dataset(dataset, tmp_path / "b", kbs=3, seed=11, align="0.5")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_different_seed_gives_different_parts(dataset, tmp_path):
    split_dataset(dataset, tmp_path / "a", kbs=2, seed=1)
    split_dataset(dataset, tmp_path / "b", kbs=2, seed=2)
    assert set(rows(tmp_path / "a" / "kb1" / "train.tsv")) != set(rows(tmp_path / "b" / "kb1" / "train.tsv"))


def test_each_kb_gets_full_valid_test_and_vocabulary(tmp_path):
    summary = split_dataset(UMLS, tmp_path / "out", kbs=3, seed=0)
    source = load_kb(UMLS)
    for name in summary.kb_names:
        folder = tmp_path / "out" / name
        assert rows(folder / "valid.tsv") == rows(UMLS / "valid.tsv")
        assert rows(folder / "test.tsv") == rows(UMLS / "test.tsv")
        kb = load_kb(folder)
        assert kb.entities.names == source.entities.names
        assert kb.relations.names == source.relations.names
        assert len(kb.train) == summary.train_counts[name]
        assert np.array_equal(kb.valid, source.valid) and np.array_equal(kb.test, source.test)


def test_vocabulary_keeps_the_source_order(dataset, tmp_path):
    names = [f"e{i}" for i in reversed(range(12))] + ["unused"]
    write(dataset / "entities.tsv", [(name, "a description") for name in names])
    write(dataset / "relations.tsv", [("r2",), ("r1",), ("r0",)])
    split_dataset(dataset, tmp_path / "out", kbs=2, seed=0, align="all")
    for name in ("kb1", "kb2"):
        assert [e for (e,) in rows(tmp_path / "out" / name / "entities.tsv")] == names
        assert rows(tmp_path / "out" / name / "relations.tsv") == [("r2",), ("r1",), ("r0",)]
    assert [a for a, _ in rows(tmp_path / "out" / "alignments" / "kb1__kb2.entities.tsv")] == names


def test_gzipped_input_is_accepted(dataset, tmp_path):
    (dataset / "train.tsv.gz").write_bytes(gzip.compress((dataset / "train.tsv").read_bytes()))
    (dataset / "train.tsv").unlink()
    summary = split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert sum(summary.train_counts.values()) == 40


def test_co_occurring_matches_brute_force(tmp_path):
    summary = split_dataset(UMLS, tmp_path / "out", kbs=4, seed=3)
    out = tmp_path / "out"
    seen = {name: train_entities(out / name) for name in summary.kb_names}
    for a, b in combinations(summary.kb_names, 2):
        lines = rows(out / "alignments" / f"{a}__{b}.entities.tsv")
        assert all(left == right for left, right in lines)
        assert {left for left, _ in lines} == seen[a] & seen[b]
        assert len(lines) == len(seen[a] & seen[b])
        assert summary.pair_counts[(a, b)] == (len(lines), len(load_kb(UMLS).relations))


def test_all_aligns_the_whole_vocabulary(tmp_path):
    split_dataset(UMLS, tmp_path / "out", kbs=2, seed=0, align="all")
    lines = rows(tmp_path / "out" / "alignments" / "kb1__kb2.entities.tsv")
    assert lines == [(e, e) for e in load_kb(UMLS).entities.names]


@pytest.mark.parametrize("fraction", ["1", "0.5", "0.25", "0.001"])
def test_fraction_samples_a_reproducible_share_of_co_occurring(tmp_path, fraction):
    summary = split_dataset(UMLS, tmp_path / "a", kbs=3, seed=5, align=fraction)
    split_dataset(UMLS, tmp_path / "b", kbs=3, seed=5, align=fraction)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    out = tmp_path / "a"
    for a, b in combinations(summary.kb_names, 2):
        shared = train_entities(out / a) & train_entities(out / b)
        lines = rows(out / "alignments" / f"{a}__{b}.entities.tsv")
        sampled = {left for left, _ in lines}
        assert len(sampled) == len(lines) == max(1, math.floor(float(fraction) * len(shared) + 0.5))
        assert sampled <= shared
    if fraction == "1":
        assert rows(out / "alignments" / "kb1__kb2.entities.tsv") == rows(
            split_dataset(UMLS, tmp_path / "c", kbs=3, seed=5).out_dir / "alignments" / "kb1__kb2.entities.tsv"
        )


@pytest.mark.parametrize("fraction", [0.2, 0.6, 1.0])
def test_extended_alignment_adds_a_share_of_the_other_entities(tmp_path, fraction):
    summary = split_dataset(UMLS, tmp_path / "out", kbs=3, seed=5, align=f"co-occurring+{fraction}")
    out, everything = tmp_path / "out", set(load_kb(UMLS).entities.names)
    for a, b in combinations(summary.kb_names, 2):
        shared = train_entities(out / a) & train_entities(out / b)
        rest = everything - shared
        lines = rows(out / "alignments" / f"{a}__{b}.entities.tsv")
        aligned = {left for left, _ in lines}
        assert all(left == right for left, right in lines) and len(aligned) == len(lines)
        assert shared <= aligned and len(aligned - shared) == max(1, math.floor(fraction * len(rest) + 0.5))
        if fraction == 1.0:
            assert aligned == everything


def test_fraction_sample_depends_on_seed(tmp_path):
    split_dataset(UMLS, tmp_path / "a", kbs=2, seed=1, align="0.3")
    split_dataset(UMLS, tmp_path / "b", kbs=2, seed=2, align="0.3")
    path = Path("alignments") / "kb1__kb2.entities.tsv"
    assert rows(tmp_path / "a" / path) != rows(tmp_path / "b" / path)


def test_relations_are_aligned_by_id(tmp_path):
    summary = split_dataset(UMLS, tmp_path / "out", kbs=3, seed=0, names=["x", "y", "z"])
    out = tmp_path / "out"
    for a, b in combinations(summary.kb_names, 2):
        left = [r for (r,) in rows(out / a / "relations.tsv")]
        right = [r for (r,) in rows(out / b / "relations.tsv")]
        lines = rows(out / "alignments" / f"{a}__{b}.relations.tsv")
        assert len(lines) == len(left) == len(right) == 46
        assert all(left[i] == x and right[i] == y for i, (x, y) in enumerate(lines))


def test_custom_names_and_layout(dataset, tmp_path):
    summary = split_dataset(dataset, tmp_path / "out", kbs=3, seed=0, names=["north", "South-2", "e.3"])
    assert summary.out_dir == tmp_path / "out"
    listing = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert listing == ["South-2", "alignments", "e.3", "north", "split.json"]
    assert sorted(p.name for p in (tmp_path / "out" / "alignments").iterdir()) == [
        f"{a}__{b}.{kind}.tsv" for a, b in [("South-2", "e.3"), ("north", "South-2"), ("north", "e.3")]
        for kind in ("entities", "relations")
    ]
    for name in summary.kb_names:
        assert sorted(p.name for p in (tmp_path / "out" / name).iterdir()) == [
            "entities.tsv", "known.tsv", "relations.tsv", "test.tsv", "train.tsv", "valid.tsv",
        ]


def test_texts_and_features_are_carried_into_every_kb(dataset, tmp_path):
    """Each split KB keeps the full vocabulary, so the dataset's texts and features are copied as they are."""
    write(dataset / "entity_text.tsv", [(f"e{i}", f"entity {i}", "" if i == 3 else f"about {i}") for i in range(12) if i != 5])
    write(dataset / "relation_text.tsv", [("r0", "zero"), ("r2", "two")])
    (dataset / "features").mkdir()
    np.save(dataset / "features" / "image.npy", np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
    write(dataset / "features" / "image.entities.tsv", [("e7",), ("e0",)])
    (dataset / "features" / "README.txt").write_text("ignored by load_kb, carried all the same")
    carried = ("entity_text.tsv", "relation_text.tsv", "features/README.txt", "features/image.entities.tsv", "features/image.npy")
    summary = split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert summary.carried == carried
    assert json.loads((tmp_path / "out" / "split.json").read_text())["carried"] == list(carried)
    source = tree(dataset)
    for name in summary.kb_names:
        folder = tmp_path / "out" / name
        copied = tree(folder)
        assert {path: copied[path] for path in carried} == {path: source[path] for path in carried}
        kb = load_kb(folder)
        e = kb.entities.index
        assert kb.entity_text.names[e["e4"]] == "entity 4" and kb.entity_text.descriptions[e["e4"]] == "about 4"
        assert kb.entity_text.descriptions[e["e3"]] == ""
        assert kb.entity_text.present.sum() == 11 and not kb.entity_text.present[e["e5"]]
        assert kb.relation_text.texts[kb.relations.index["r2"]] == "two"
        assert kb.relation_text.present.tolist() == [r != "r1" for r in kb.relations.names]
        image = kb.features["image"]
        np.testing.assert_array_equal(image.values[[e["e7"], e["e0"], e["e1"]]], [[1, 2], [3, 4], [0, 0]])
        assert image.present.sum() == 2


def test_features_in_entities_tsv_order_stay_aligned(dataset, tmp_path):
    names = [f"e{i}" for i in reversed(range(12))]
    write(dataset / "entities.tsv", [(name,) for name in names])
    (dataset / "features").mkdir()
    np.save(dataset / "features" / "image.npy", np.arange(12, dtype=np.float32).reshape(12, 1))
    split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    kb = load_kb(tmp_path / "out" / "kb2")
    assert [kb.features["image"].values[kb.entities.index[name], 0] for name in names] == list(range(12))
    assert kb.entity_text is None and kb.relation_text is None


def test_bad_texts_or_features_write_nothing(dataset, tmp_path):
    write(dataset / "entity_text.tsv", [("e0", "zero", ""), ("nobody", "who", "")])
    before = set(tmp_path.iterdir())
    with pytest.raises(DataError, match=r"entity_text\.tsv line 2: unknown entity 'nobody'"):
        split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert_nothing_written(tmp_path, before)
    (dataset / "entity_text.tsv").unlink()
    (dataset / "features").mkdir()
    np.save(dataset / "features" / "image.npy", np.full((2, 2), np.nan))
    write(dataset / "features" / "image.entities.tsv", [("e0",), ("e1",)])
    with pytest.raises(DataError, match=r"image\.npy row 0 \(entity 'e0'\): NaN"):
        split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert_nothing_written(tmp_path, before)


def test_known_triples_are_the_peers_train_parts_and_only_filter(dataset, tmp_path):
    """Each KB filters its evaluation with the facts its peers train on, but never trains on them."""
    summary = split_dataset(dataset, tmp_path / "out", kbs=3, seed=0)
    source = load_kb(dataset)
    kbs = {name: load_kb(tmp_path / "out" / name) for name in summary.kb_names}
    as_set = lambda kb, triples: {(kb.entities.names[h], kb.relations.names[r], kb.entities.names[t]) for h, r, t in triples.tolist()}
    everything = as_set(source, source.train)
    for name, kb in kbs.items():
        own, known = as_set(kb, kb.train), as_set(kb, kb.filter_only)
        assert not own & known and own | known == everything
        assert len(kb.filter_only) == len(source.train) - len(kb.train)
        assert as_set(kb, kb.known_triples()) >= everything | as_set(kb, kb.test)
    assert sorted(tmp_path.iterdir()) == [tmp_path / "data", tmp_path / "out"]


def test_split_json_records_provenance(tmp_path):
    summary = split_dataset(UMLS, tmp_path / "out", kbs=3, seed=9, align="0.5")
    out = tmp_path / "out"
    info = json.loads((out / "split.json").read_text())
    assert info["source"] == str(UMLS.resolve())
    assert (info["seed"], info["kbs"], info["align"]) == (9, 3, "0.5")
    assert info["kb_names"] == ["kb1", "kb2", "kb3"]
    assert info["train_counts"] == {name: len(rows(out / name / "train.tsv")) for name in info["kb_names"]}
    assert sum(info["train_counts"].values()) == 5216
    assert [p["kbs"] for p in info["pairs"]] == [["kb1", "kb2"], ["kb1", "kb3"], ["kb2", "kb3"]]
    for pair in info["pairs"]:
        a, b = pair["kbs"]
        aligned = {left for left, _ in rows(out / "alignments" / f"{a}__{b}.entities.tsv")}
        seen_a, seen_b = train_entities(out / a), train_entities(out / b)
        assert pair["aligned_entities"] == len(aligned) == summary.pair_counts[(a, b)][0]
        assert pair["aligned_relations"] == 46 == summary.pair_counts[(a, b)][1]
        assert pair["share"] == pytest.approx(len(aligned & (seen_a | seen_b)) / len(seen_a | seen_b), abs=1e-6)
        assert pair["coverage"][a] == pytest.approx(len(aligned & seen_a) / len(seen_a), abs=1e-6)
        assert pair["coverage"][b] == pytest.approx(len(aligned & seen_b) / len(seen_b), abs=1e-6)


def test_empty_out_dir_is_accepted(dataset, tmp_path):
    (tmp_path / "out").mkdir()
    split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert (tmp_path / "out" / "split.json").is_file()


# --- errors: each must leave nothing behind ------------------------------------------------------


def assert_nothing_written(parent: Path, before: set[Path]) -> None:
    assert set(parent.iterdir()) == before, "partial output or a staging directory was left behind"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kbs": 1}, "kbs"),
        ({"kbs": 0}, "kbs"),
        ({"kbs": 41}, "kbs: 41 is more than the 40 train triples"),
        ({"kbs": 2, "seed": -1}, "seed"),
        *[({"kbs": 2, "align": bad}, "align: invalid value") for bad in ("abc", "0", "1.5", "-0.2", "nan", "", "co-occurring+", "co-occurring+0", "co-occurring+1.2", "all+0.2")],
        ({"kbs": 2, "names": ["a"]}, "names"),
        ({"kbs": 2, "names": ["a", "A"]}, "given twice"),
        ({"kbs": 2, "names": ["a", ""]}, "not a safe KB name"),
        ({"kbs": 2, "names": ["a", "b/c"]}, "not a safe KB name"),
        ({"kbs": 2, "names": ["a", ".."]}, "not a safe KB name"),
        ({"kbs": 2, "names": ["a", "b__c"]}, "not a safe KB name"),
        ({"kbs": 2, "names": ["a", "alignments"]}, "reserved"),
    ],
)
def test_bad_config_writes_nothing(dataset, tmp_path, kwargs, match):
    before = set(tmp_path.iterdir())
    kwargs.setdefault("seed", 0)
    with pytest.raises(ConfigError, match=match):
        split_dataset(dataset, tmp_path / "out", **kwargs)
    assert_nothing_written(tmp_path, before)


def test_bad_align_message_lists_the_accepted_values(dataset, tmp_path):
    with pytest.raises(ConfigError) as error:
        split_dataset(dataset, tmp_path / "out", kbs=2, seed=0, align="abc")
    assert "align" in str(error.value) and "co-occurring" in str(error.value) and '"all"' in str(error.value)


def test_malformed_dataset_names_file_and_line(dataset, tmp_path):
    with (dataset / "valid.tsv").open("a") as handle:
        handle.write("e1\tr0\n")
    before = set(tmp_path.iterdir())
    with pytest.raises(DataError, match=r"valid\.tsv line 3: expected 3 tab-separated columns, found 2"):
        split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert_nothing_written(tmp_path, before)


def test_missing_dataset_writes_nothing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        split_dataset(tmp_path / "nope", tmp_path / "out" / "deep", kbs=2, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_non_empty_out_dir_is_left_untouched(dataset, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    before = set(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert_nothing_written(tmp_path, before)
    assert tree(tmp_path / "out") == {"keep.txt": b"mine"}


def test_out_dir_that_is_a_file_is_refused(dataset, tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(ConfigError, match="out_dir"):
        split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert (tmp_path / "out").read_text() == "mine"


def test_failure_while_writing_removes_the_staging_directory(dataset, tmp_path, monkeypatch):
    calls = []
    real = split_module.write_rows

    def failing(path, lines):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        real(path, lines)

    monkeypatch.setattr(split_module, "write_rows", failing)
    before = set(tmp_path.iterdir())
    with pytest.raises(OSError, match="disk full"):
        split_dataset(dataset, tmp_path / "out", kbs=2, seed=0)
    assert_nothing_written(tmp_path, before)


@pytest.mark.skipif(not WN18RR.is_dir(), reason="shared/data/wn18rr not present")
def test_wn18rr_halves_share_about_64_percent(tmp_path):
    split_dataset(WN18RR, tmp_path / "out", kbs=2, seed=0)
    (pair,) = json.loads((tmp_path / "out" / "split.json").read_text())["pairs"]
    print(f"WN18RR halves, co-occurring: share={pair['share']:.3f} coverage={pair['coverage']}")
    assert 0.55 <= pair["share"] <= 0.75
