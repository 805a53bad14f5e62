"""The missing-modality sweep's masking (DSoM's Fig. 4): the same entities lose every modality, an exact share, fixed by the seed."""

from __future__ import annotations

import numpy as np
import pytest

from kdmkb.kb_worker.data import load_kb
from kdmkb.services.errors import ConfigError
from kdmkb.services.features import drop_feature_rows, missing_entities, write_features
from kdmkb.services.tsv import write_rows

E = 50


@pytest.fixture
def kb_dir(tmp_path):
    """50 entities; text for all, numeric for the even ones (the odd ones are missing already)."""
    folder = tmp_path / "kb"
    folder.mkdir()
    names = [f"e{i}" for i in range(E)]
    write_rows(folder / "entities.tsv", [(name,) for name in names])
    for split in ("train", "valid", "test"):
        write_rows(folder / f"{split}.tsv", [(names[i], "r", names[i + 1]) for i in range(E - 1)])
    write_features(folder, "text", names, np.arange(E * 3, dtype=np.float32).reshape(E, 3))
    write_features(folder, "numeric", names[::2], np.arange(E // 2, dtype=np.float32)[:, None])
    return folder


def test_missing_entities_are_an_exact_share_fixed_by_the_seed():
    names = [f"e{i}" for i in range(E)]
    for rate, count in ((0.2, 10), (0.5, 25), (0.8, 40), (0.0, 0), (1.0, E)):
        chosen = missing_entities(names, rate, seed=0)
        assert len(chosen) == len(set(chosen)) == count and set(chosen) <= set(names)
    assert missing_entities(names, 0.5, seed=0) == missing_entities(names, 0.5, seed=0)
    assert missing_entities(names, 0.5, seed=0) != missing_entities(names, 0.5, seed=1)
    with pytest.raises(ConfigError, match=r"rate: a fraction of the entities in \[0, 1\], got 1.5"):
        missing_entities(names, 1.5, seed=0)


def test_every_modality_loses_the_rows_of_the_same_entities(kb_dir, tmp_path):
    source = load_kb(kb_dir)
    dropped = missing_entities(list(source.entities.names), 0.2, seed=0)
    out = tmp_path / "masked"
    out.mkdir()
    for name in ("entities.tsv", "train.tsv", "valid.tsv", "test.tsv"):
        (out / name).symlink_to(kb_dir / name)
    left = drop_feature_rows(kb_dir, out, ["text", "numeric"], dropped)
    masked = load_kb(out)
    gone = np.isin(np.array(masked.entities.names), dropped)
    assert gone.sum() == 10
    text, numeric = masked.features["text"], masked.features["numeric"]
    assert text.present.tolist() == (~gone).tolist()  # text had every entity: exactly the dropped ones are missing
    assert numeric.present.tolist() == (source.features["numeric"].present & ~gone).tolist()  # already missing stays missing
    assert left == {"text": 40, "numeric": int(numeric.present.sum())}
    kept = np.flatnonzero(text.present)
    np.testing.assert_array_equal(text.values[kept], source.features["text"].values[kept])  # the other rows unchanged
    assert not text.values[gone].any()  # a missing entity reads zeros, as every missing row does
