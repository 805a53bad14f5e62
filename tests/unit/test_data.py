"""load_kb on temporary KB folders: vocabularies, ids, gzip, and every malformed input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from kdmkb.kb_worker.data import load_kb
from kdmkb.services.errors import DataError

TRAIN = "a\tr1\tb\nb\tr2\tc\n"
VALID = "c\tr1\td\n"
TEST = "e\tr3\ta\n"


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    data = text.encode("utf-8") if isinstance(text, str) else text
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_kb_folder(folder: Path, *, train=TRAIN, valid=VALID, test=TEST, entities=None, relations=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.tsv", train), ("valid.tsv", valid), ("test.tsv", test), ("entities.tsv", entities), ("relations.tsv", relations)):
        if text is not None:
            write(folder, name, text)
    return folder


def names(kb, split):
    return [(kb.entities.names[h], kb.relations.names[r], kb.entities.names[t]) for h, r, t in kb.split(split).tolist()]


# -- happy paths -----------------------------------------------------------------------------------
def test_vocabulary_from_triples_in_order_of_first_appearance(tmp_path):
    kb = load_kb(make_kb_folder(tmp_path / "kb"))
    assert kb.entities.names == ("a", "b", "c", "d", "e")
    assert kb.relations.names == ("r1", "r2", "r3")
    np.testing.assert_array_equal(kb.train, [[0, 0, 1], [1, 1, 2]])
    np.testing.assert_array_equal(kb.valid, [[2, 0, 3]])
    np.testing.assert_array_equal(kb.test, [[4, 2, 0]])
    assert kb.train.dtype == np.int64 and kb.train.shape == (2, 3)
    assert names(kb, "test") == [("e", "r3", "a")]
    assert kb.known_triples().shape == (4, 3)
    assert kb.entities.index["d"] == 3


def test_vocabulary_files_fix_the_order_and_may_list_more(tmp_path):
    folder = make_kb_folder(
        tmp_path / "kb",
        entities="z\tunused entity\twith a description\ne\nd\nc\nb\na\n",  # extra columns are allowed
        relations="r3\nr2\nr1\nr0\n",
    )
    kb = load_kb(folder)
    assert kb.entities.names == ("z", "e", "d", "c", "b", "a")
    assert kb.relations.names == ("r3", "r2", "r1", "r0")
    np.testing.assert_array_equal(kb.train, [[5, 2, 4], [4, 1, 3]])
    assert names(kb, "train") == [("a", "r1", "b"), ("b", "r2", "c")]
    assert names(kb, "valid") == [("c", "r1", "d")]


def test_only_an_entity_file(tmp_path):
    kb = load_kb(make_kb_folder(tmp_path / "kb", entities="e\nd\nc\nb\na\n"))
    assert kb.entities.names == ("e", "d", "c", "b", "a")
    assert kb.relations.names == ("r1", "r2", "r3")  # from the triples


def test_gzipped_files_blank_lines_crlf_and_padding(tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    write(folder, "train.tsv.gz", "a\tr1\tb\r\n\r\n  \nb \tr2\t c\r\n")
    write(folder, "valid.tsv", VALID)
    write(folder, "test.tsv.gz", TEST)
    write(folder, "entities.tsv.gz", "a\nb\nc\nd\ne\n")
    kb = load_kb(folder)
    assert names(kb, "train") == [("a", "r1", "b"), ("b", "r2", "c")]
    assert names(kb, "test") == [("e", "r3", "a")]
    assert kb.entities.names == ("a", "b", "c", "d", "e")


def test_string_path_and_packaged_dataset():
    kb = load_kb(str(Path(__file__).parents[2] / "services" / "datasets" / "umls"))
    assert len(kb.entities) == 135 and len(kb.relations) == 46
    assert len(kb.train) == 5216 and len(kb.valid) == 652 and len(kb.test) == 661


def test_unknown_split_name(tmp_path):
    kb = load_kb(make_kb_folder(tmp_path / "kb"))
    with pytest.raises(DataError, match="unknown split 'dev'"):
        kb.split("dev")


# -- malformed input -------------------------------------------------------------------------------
def load_error(folder: Path) -> str:
    with pytest.raises(DataError) as raised:
        load_kb(folder)
    return str(raised.value)


@pytest.mark.parametrize(
    "line, found",
    [("a\tr1\n", 2), ("a\tr1\tb\textra\n", 4), ("a r1 b\n", 1)],
)
def test_wrong_column_count(tmp_path, line, found):
    message = load_error(make_kb_folder(tmp_path / "kb", train="a\tr1\tb\n\n" + line))
    assert "train.tsv" in message and "line 3" in message
    assert f"found {found}" in message


def test_vocabulary_with_no_column(tmp_path):
    message = load_error(make_kb_folder(tmp_path / "kb", entities="a\n\tb\n"))
    assert "entities.tsv" in message and "line 2" in message and "empty field" in message


@pytest.mark.parametrize("text", ["", "\n\n   \n"])
def test_empty_file(tmp_path, text):
    message = load_error(make_kb_folder(tmp_path / "kb", valid=text))
    assert "valid.tsv" in message and "empty" in message


def test_empty_entities_file(tmp_path):
    message = load_error(make_kb_folder(tmp_path / "kb", entities=""))
    assert "entities.tsv" in message and "empty" in message


@pytest.mark.parametrize("line", ["a\t\tb", "a\tr1\t ", "\tr1\tb"])
def test_empty_field(tmp_path, line):
    message = load_error(make_kb_folder(tmp_path / "kb", test=TEST + line + "\n"))
    assert "test.tsv" in message and "line 2" in message and "empty field" in message


@pytest.mark.parametrize("split", ["valid", "test"])
def test_unknown_entity_when_entities_are_listed(tmp_path, split):
    texts = {"valid": VALID, "test": TEST}
    texts[split] += "zz\tr1\ta\n"
    folder = make_kb_folder(tmp_path / "kb", entities="a\nb\nc\nd\ne\n", **texts)
    message = load_error(folder)
    assert f"{split}.tsv" in message and "line 2" in message and "'zz'" in message and "entity" in message


def test_unknown_relation_when_relations_are_listed(tmp_path):
    message = load_error(make_kb_folder(tmp_path / "kb", relations="r1\nr2\n"))  # r3 is used in test
    assert "test.tsv" in message and "line 1" in message and "relation 'r3'" in message


def test_duplicate_vocabulary_entry(tmp_path):
    message = load_error(make_kb_folder(tmp_path / "kb", entities="a\nb\nc\nd\na\te again\n"))
    assert "entities.tsv" in message and "line 5" in message and "'a'" in message and "line 1" in message


@pytest.mark.parametrize("missing", ["train", "valid", "test"])
def test_missing_split_file(tmp_path, missing):
    folder = make_kb_folder(tmp_path / "kb")
    (folder / f"{missing}.tsv").unlink()
    message = load_error(folder)
    assert f"{missing}.tsv" in message and "missing" in message


def test_non_utf8(tmp_path):
    folder = make_kb_folder(tmp_path / "kb")
    write(folder, "train.tsv", b"a\tr1\tb\n\xff\xfe\tr1\tc\n")
    message = load_error(folder)
    assert "train.tsv" in message and "UTF-8" in message


def test_corrupt_gzip(tmp_path):
    folder = make_kb_folder(tmp_path / "kb")
    (folder / "train.tsv").unlink()
    (folder / "train.tsv.gz").write_bytes(b"this is not gzip")
    message = load_error(folder)
    assert "train.tsv.gz" in message


def test_missing_folder(tmp_path):
    message = load_error(tmp_path / "nowhere")
    assert "nowhere" in message and "not found" in message


def test_a_file_instead_of_a_folder(tmp_path):
    path = write(tmp_path, "train.tsv", TRAIN)
    assert "not found" in load_error(path)
