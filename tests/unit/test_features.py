"""``kdmkb features numeric|text``: the matrices they write, checked by hand, and the KB that reads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdmkb.kb_worker.data import load_kb
from kdmkb.services.cli import app
from kdmkb.services.errors import DataError
from kdmkb.services.tsv import write_rows


@pytest.fixture
def kb_dir(tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    write_rows(folder / "train.tsv", [("a", "r", "b"), ("b", "r", "c"), ("c", "r", "d")])
    write_rows(folder / "valid.tsv", [("a", "r", "c")])
    write_rows(folder / "test.tsv", [("b", "r", "d")])
    write_rows(folder / "entity_text.tsv", [("a", "alpha", "the first letter"), ("b", "beta", ""), ("d", "delta", "a river mouth")])
    return folder


def test_numeric_literals_become_min_max_values_and_presence_flags(kb_dir, tmp_path):
    literals = tmp_path / "literals.tsv"
    write_rows(literals, [("a", "height", "10"), ("b", "height", "30"), ("b", "height", "50"), ("c", "year", "1900"), ("zz", "height", "99")])
    result = CliRunner().invoke(app, ["features", "numeric", str(kb_dir), "--literals", str(literals)])
    assert result.exit_code == 0, result.output
    assert "3 entities x 2 attributes" in result.output and "1 entities without literals" in result.output and "1 literals of other entities skipped" in result.output
    kb = load_kb(kb_dir)
    features = kb.features["numeric"]
    ids = kb.entities.index
    # columns: height, year (values), then their presence flags; b's height is the mean of 30 and 50
    np.testing.assert_allclose(features.values[ids["a"]], [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(features.values[ids["b"]], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(features.values[ids["c"]], [0.0, 0.5, 0.0, 1.0])  # one year value: presence only
    assert features.present.tolist() == [ids[e] != ids["d"] for e in kb.entities.names]
    assert not features.values[ids["d"]].any()


def test_bad_literals_are_refused_with_file_and_line(kb_dir, tmp_path):
    from kdmkb.services.features import numeric_features

    literals = tmp_path / "literals.tsv"
    write_rows(literals, [("a", "height", "10"), ("b", "height", "tall")])
    with pytest.raises(DataError, match="literals.tsv line 2: value 'tall' is not a number"):
        numeric_features(kb_dir, literals)
    assert not (kb_dir / "features").exists()
    write_rows(literals, [("zz", "height", "1")])
    with pytest.raises(DataError, match="no literal names an entity"):
        numeric_features(kb_dir, literals)


def test_text_features_are_the_mean_pooled_encoder_outputs(kb_dir, tiny_encoder):
    from transformers import AutoModel, AutoTokenizer

    result = CliRunner().invoke(app, ["features", "text", str(kb_dir), "--encoder", tiny_encoder, "--max-length", "32"])
    assert result.exit_code == 0, result.output
    kb = load_kb(kb_dir)
    features = kb.features["text"]
    ids = kb.entities.index
    assert features.present.tolist() == [name != "c" for name in kb.entities.names]  # c has no text row
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_encoder), AutoModel.from_pretrained(tiny_encoder).eval()
    with torch.no_grad():  # one sentence at a time: no padding, the plain mean over its tokens
        for entity, sentence in (("a", "alpha, the first letter"), ("b", "beta")):
            hidden = model(**tokenizer([sentence], truncation=True, max_length=32, return_tensors="pt")).last_hidden_state[0]
            np.testing.assert_allclose(features.values[ids[entity]], hidden.mean(dim=0).numpy(), rtol=1e-4, atol=1e-5)


def test_text_features_need_entity_texts(tmp_path, tiny_encoder):
    from kdmkb.services.features import text_features

    folder = tmp_path / "plain"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        write_rows(folder / f"{split}.tsv", [("a", "r", "b")])
    with pytest.raises(DataError, match="no entity_text.tsv"):
        text_features(folder, tiny_encoder)


def test_text_features_from_another_tsv_are_written_under_their_own_name(kb_dir, tiny_encoder, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    wikidata = tmp_path / "entity_wikidata.tsv"  # FB15k-237's layout: a header, then id, wikidata id, label, description, link
    write_rows(wikidata, [("mid", "wikidata_id", "label", "description", "wikipedia"), ("c", "Q3", "gamma", "third letter", "w/c"), ("a", "Q1", "Alpha", "", "w/a"), ("zz", "Q9", "other", "not in the KB", "w/z")])
    result = CliRunner().invoke(app, ["features", "text", str(kb_dir), "--encoder", tiny_encoder, "--max-length", "32", "--texts", str(wikidata), "--header", "--columns", "1,3,4", "--name", "wikidata"])
    assert result.exit_code == 0, result.output
    assert "2 entities x" in result.output and "2 without text" in result.output and "1 rows of other entities skipped" in result.output
    kb = load_kb(kb_dir)
    assert set(kb.features) == {"wikidata"}  # entity_text.tsv is not encoded
    features, ids = kb.features["wikidata"], kb.entities.index
    assert features.present.tolist() == [name in ("a", "c") for name in kb.entities.names]
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_encoder), AutoModel.from_pretrained(tiny_encoder).eval()
    with torch.no_grad():
        for entity, sentence in (("c", "gamma, third letter"), ("a", "Alpha")):  # the label alone where the description is empty
            hidden = model(**tokenizer([sentence], truncation=True, max_length=32, return_tensors="pt")).last_hidden_state[0]
            np.testing.assert_allclose(features.values[ids[entity]], hidden.mean(dim=0).numpy(), rtol=1e-4, atol=1e-5)


def test_bad_texts_options_are_refused_naming_them(kb_dir, tiny_encoder, tmp_path):
    texts = tmp_path / "texts.tsv"
    write_rows(texts, [("a", "alpha", "x"), ("a", "again", "y")])
    for options, message in (
        (["--name", "no/slash"], "name: 'no/slash' is not a modality name"),
        (["--columns", "1,2"], "columns: three 1-based column numbers"),
        (["--columns", "1,x,3"], "columns: three comma-separated column numbers"),
        ([], "line 2: duplicate entity 'a' (first on line 1)"),
    ):
        result = CliRunner().invoke(app, ["features", "text", str(kb_dir), "--encoder", tiny_encoder, "--texts", str(texts), *options])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (kb_dir / "features").exists()  # nothing written
