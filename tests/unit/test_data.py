"""load_kb on temporary KB folders: vocabularies, ids, gzip, texts, feature matrices, and every malformed input."""

from __future__ import annotations

import gzip
import re
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
    assert kb.entity_text is None and kb.relation_text is None and kb.features == {}


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
    assert kb.entity_text.present.all() and kb.relation_text.present.all()
    assert kb.entity_text.names[kb.entities.index["age_group"]] == "age group"
    assert kb.relation_text.texts[kb.relations.index["adjacent_to"]] == "adjacent to"


def test_unknown_split_name(tmp_path):
    kb = load_kb(make_kb_folder(tmp_path / "kb"))
    with pytest.raises(DataError, match="unknown split 'dev'"):
        kb.split("dev")


# -- texts and features ----------------------------------------------------------------------------
def save_features(folder: Path, modality: str, values, row_ids: str | None = None) -> Path:
    (folder / "features").mkdir(exist_ok=True)
    path = folder / "features" / f"{modality}.npy"
    np.save(path, np.asarray(values))
    if row_ids is not None:
        write(folder / "features", f"{modality}.entities.tsv", row_ids)
    return path


def test_texts_are_aligned_with_local_ids_and_missing_rows_flagged(tmp_path):
    folder = make_kb_folder(tmp_path / "kb", entities="e\nd\nc\nb\na\n")
    # "d" has no row; "b" has an empty description; the file's order is not the vocabulary's.
    write(folder, "entity_text.tsv", "a\tApple\tA fruit.\nb\tBanana\t\nc\tCherry\tRed,   small\ne\tElder\tA tree\n")
    write(folder, "relation_text.tsv.gz", "r3\tgrows on\nr1\tis next to\n")
    kb = load_kb(folder)
    assert kb.entity_text.names == ("Elder", "", "Cherry", "Banana", "Apple")
    assert kb.entity_text.descriptions == ("A tree", "", "Red,   small", "", "A fruit.")
    assert kb.entity_text.present.tolist() == [True, False, True, True, True]
    assert kb.entity_text.present.dtype == bool
    assert kb.relations.names == ("r1", "r2", "r3")
    assert kb.relation_text.texts == ("is next to", "", "grows on")
    assert kb.relation_text.present.tolist() == [True, False, True]
    assert kb.features == {}


def test_features_follow_entities_tsv_without_a_row_file(tmp_path):
    folder = make_kb_folder(tmp_path / "kb", entities="e\nd\nc\nb\na\n")
    save_features(folder, "image", np.arange(10, dtype=np.int64).reshape(5, 2))  # integers become float32
    write(folder / "features", "README.txt", "ignored")
    write(folder / "features", "notes.json", "{}")
    kb = load_kb(folder)
    assert list(kb.features) == ["image"]
    image = kb.features["image"]
    assert image.values.dtype == np.float32 and image.values.shape == (5, 2)
    np.testing.assert_array_equal(image.values[kb.entities.index["e"]], [0, 1])
    np.testing.assert_array_equal(image.values[kb.entities.index["a"]], [8, 9])
    assert image.present.all()
    assert kb.entity_text is None and kb.relation_text is None


def test_features_with_a_row_file_put_rows_at_local_ids_and_zeros_for_the_rest(tmp_path):
    folder = make_kb_folder(tmp_path / "kb")  # vocabulary from the triples: a b c d e
    save_features(folder, "image", [[1.5, -2.0, 0.25], [3.0, 4.0, 5.0], [-1.0, 0.0, 1.0]], "d\na\n\ne\n")
    save_features(folder, "audio-2", np.full((1, 1), 7.0, dtype=np.float64), "c\n")
    kb = load_kb(folder)
    assert sorted(kb.features) == ["audio-2", "image"]
    image = kb.features["image"]
    np.testing.assert_array_equal(
        image.values, [[3.0, 4.0, 5.0], [0, 0, 0], [0, 0, 0], [1.5, -2.0, 0.25], [-1.0, 0.0, 1.0]]
    )
    assert image.present.tolist() == [True, False, False, True, True]
    np.testing.assert_array_equal(kb.features["audio-2"].values, [[0], [0], [7], [0], [0]])
    assert kb.features["audio-2"].present.tolist() == [False, False, True, False, False]


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


@pytest.mark.parametrize("name", ["train.tsv", "train.tsv.gz"])
def test_a_leading_byte_order_mark_is_not_part_of_a_name(tmp_path, name):
    folder = make_kb_folder(tmp_path / "kb", train=None)
    write(folder, name, "\ufeff" + TRAIN)
    assert load_kb(folder).entities.names == ("a", "b", "c", "d", "e")


@pytest.mark.parametrize(("line", "where"), [("a\x00\tr1\tb", "column 2: control character '\\x00'"), ("a\tr1\tb\x1b[0m", "column 7: control character '\\x1b'"), ("a\tr\x7f1\tb", "column 4: control character '\\x7f'")])
def test_control_characters_are_refused_with_file_and_line(tmp_path, line, where):
    folder = make_kb_folder(tmp_path / "kb", valid=VALID + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"valid.tsv line 2 {where}")):
        load_kb(folder)


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


# -- malformed texts -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("entity_text.tsv", "a\tApple\tA fruit.\nb\tBanana\n", "line 2: expected 3 tab-separated columns, found 2"),
        ("entity_text.tsv", "a\tApple\tA fruit.\tmore\n", "line 1: expected 3 tab-separated columns, found 4"),
        ("entity_text.tsv", "a\tApple\t\n\nb\t\tA fruit\n", "line 3: empty field"),
        ("entity_text.tsv", "a\tApple\t\nzz\tZed\tnot here\n", "line 2: unknown entity 'zz' (not in the KB's vocabulary)"),
        ("entity_text.tsv", "r1\tNot an entity\t\n", "line 1: unknown entity 'r1'"),
        ("entity_text.tsv", "a\tApple\t\nb\tBanana\t\na\tApple again\t\n", "line 3: duplicate entity 'a' (first on line 1)"),
        ("relation_text.tsv", "r1\tnext to\tmore\n", "line 1: expected 2 tab-separated columns, found 3"),
        ("relation_text.tsv", "r1\tnext to\nr9\tnine\n", "line 2: unknown relation 'r9'"),
        ("relation_text.tsv", "r1\tnext to\nr1\tagain\n", "line 2: duplicate relation 'r1' (first on line 1)"),
        ("relation_text.tsv", "r1\t \n", "line 1: empty field"),
    ],
)
def test_malformed_text_file(tmp_path, name, text, problem):
    folder = make_kb_folder(tmp_path / "kb")
    write(folder, name, text)
    assert f"{name} {problem}" in load_error(folder)


# -- malformed features ----------------------------------------------------------------------------
def test_features_need_a_row_order(tmp_path):
    folder = make_kb_folder(tmp_path / "kb")
    save_features(folder, "image", np.ones((5, 2)))
    message = load_error(folder)
    assert "image.npy: 5 rows and the KB has no entities.tsv" in message and "add image.entities.tsv" in message


def test_features_without_row_file_must_match_entities_tsv(tmp_path):
    folder = make_kb_folder(tmp_path / "kb", entities="a\nb\nc\nd\ne\nf\n")
    save_features(folder, "image", np.ones((5, 2)))
    message = load_error(folder)
    assert "image.npy: 5 rows and entities.tsv lists 6 entities" in message and "add image.entities.tsv" in message


@pytest.mark.parametrize(
    "row_ids, problem",
    [
        ("a\nb\n", "image.entities.tsv: lists 2 entities but image.npy has 3 rows"),
        ("a\nb\nc\nd\n", "image.entities.tsv: lists 4 entities but image.npy has 3 rows"),
        ("a\nzz\nb\n", "image.entities.tsv line 2: unknown entity 'zz'"),
        ("a\nb\n\na\n", "image.entities.tsv line 4: duplicate entity 'a' (first on line 1)"),
        ("a\tb\nc\nd\n", "image.entities.tsv line 1: expected 1 tab-separated columns, found 2"),
        ("", "image.entities.tsv: file is empty"),
    ],
)
def test_malformed_row_file(tmp_path, row_ids, problem):
    folder = make_kb_folder(tmp_path / "kb")
    save_features(folder, "image", np.ones((3, 2)), row_ids)
    assert problem in load_error(folder)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_feature_values_name_the_row(tmp_path, bad):
    folder = make_kb_folder(tmp_path / "kb")
    values = np.ones((3, 2))
    values[2, 1] = bad
    save_features(folder, "image", values, "a\nb\nc\n")
    assert "image.npy row 2 (entity 'c'): NaN or infinite value" in load_error(folder)


@pytest.mark.parametrize(
    "values, problem",
    [
        (np.ones(3), "expected a 2-D array [rows, d] with d >= 1, found shape (3,)"),
        (np.ones((3, 2, 1)), "found shape (3, 2, 1)"),
        (np.ones((3, 0)), "found shape (3, 0)"),
        (np.ones((3, 2), dtype=bool), "expected float or integer values, found dtype bool"),
        (np.ones((3, 2), dtype=np.complex64), "found dtype complex64"),
        (np.array([["x", "y"]] * 3), "found dtype <U1"),
    ],
)
def test_feature_matrix_of_the_wrong_kind(tmp_path, values, problem):
    folder = make_kb_folder(tmp_path / "kb")
    save_features(folder, "image", values, "a\nb\nc\n")
    message = load_error(folder)
    assert "image.npy" in message and problem in message


@pytest.mark.parametrize("content", [b"not an array", b""])
def test_unreadable_feature_file(tmp_path, content):
    folder = make_kb_folder(tmp_path / "kb")
    write(save_features(folder, "image", np.ones((3, 2)), "a\nb\nc\n").parent, "image.npy", content)
    assert "image.npy: cannot read as a .npy array" in load_error(folder)


def test_pickled_feature_file_is_not_unpickled(tmp_path):
    folder = make_kb_folder(tmp_path / "kb")
    (folder / "features").mkdir()
    np.save(folder / "features" / "image.npy", np.array([[{"a": 1}]] * 3, dtype=object), allow_pickle=True)
    write(folder / "features", "image.entities.tsv", "a\nb\nc\n")
    assert "image.npy: cannot read as a .npy array" in load_error(folder)


@pytest.mark.parametrize("modality", ["_image", "my image", "image.v2"])
def test_bad_modality_name(tmp_path, modality):
    folder = make_kb_folder(tmp_path / "kb", entities="a\nb\nc\nd\ne\n")
    save_features(folder, modality, np.ones((5, 2)))
    assert f"{modality}.npy: {modality!r} is not a modality name" in load_error(folder)


def test_row_file_without_its_matrix(tmp_path):
    folder = make_kb_folder(tmp_path / "kb", entities="a\nb\nc\nd\ne\n")
    save_features(folder, "image", np.ones((5, 2)))
    write(folder / "features", "img.entities.tsv", "a\nb\n")
    assert "img.entities.tsv: no img.npy next to it" in load_error(folder)


def test_features_must_be_a_folder(tmp_path):
    folder = make_kb_folder(tmp_path / "kb")
    write(folder, "features", "not a folder")
    assert "features: expected a folder" in load_error(folder)
