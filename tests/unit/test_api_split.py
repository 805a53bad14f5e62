"""kdmkb.split and the jobs it gives, without Ray: job files from a split, a dict or a path, and a saved copy that runs from its own folder."""

from __future__ import annotations

import pytest

import kdmkb
from kdmkb.services.api import Split
from kdmkb.services.config import job_file_from_dict, load_job_file
from kdmkb.services.errors import ConfigError


@pytest.fixture(scope="module")
def split() -> Split:
    return kdmkb.split(kdmkb.dataset_dir("nations"), kbs=2, seed=0)


def test_a_split_without_out_lives_in_a_temporary_folder_while_it_is_referenced():
    split = kdmkb.split(kdmkb.dataset_dir("nations"), kbs=2, seed=0)
    folder = split.out_dir
    assert (folder / "kb1" / "train.tsv").is_file() and split.kb_names == ("kb1", "kb2")
    del split
    assert not folder.exists()


def test_its_job_names_every_kb_and_alignment_with_the_settings_given(split):
    job = split.job(strategy="one-way", strategy_settings={"teacher": "kb2"}, worker_type="distmult", worker_settings={"dim": 8}, rounds=3, alpha=0.25)
    assert [entry.name for entry in job.kb] == ["kb1", "kb2"] and all(entry.data.is_absolute() and entry.data.is_dir() for entry in job.kb)
    assert {entry.worker_type for entry in job.kb} == {"distmult"} and job.kb[0].settings == {"dim": 8}
    assert job.job.rounds == 3 and job.job.alpha == 0.25 and job.strategy == "one-way" and job.strategy_settings == {"teacher": "kb2"}
    assert [alignment.kbs for alignment in job.alignment] == [("kb1", "kb2")] and job.alignment[0].entities.is_file()
    with pytest.raises(ConfigError, match="job.roundz"):
        split.job(roundz=3)


def test_saved_elsewhere_it_runs_from_its_own_folder(split, tmp_path):
    path = split.save(tmp_path / "copy")
    job = load_job_file(path)
    assert [entry.data for entry in job.kb] == [tmp_path / "copy" / "kb1", tmp_path / "copy" / "kb2"]
    assert (tmp_path / "copy" / "split.json").is_file() and job.alignment[0].entities == tmp_path / "copy" / "alignments" / "kb1__kb2.entities.tsv"
    with pytest.raises(ConfigError, match="already exists and is not an empty directory"):
        split.save(tmp_path / "copy")


def test_a_dict_job_resolves_its_paths_against_the_folder_given(tmp_path):
    job = job_file_from_dict({"kb": [{"name": "a", "data": "kbs/a"}], "alignment": [{"kbs": ["a", "b"], "entities": "al/e.tsv"}]}, tmp_path)
    assert job.kb[0].data == tmp_path / "kbs" / "a" and job.alignment[0].entities == tmp_path / "al" / "e.tsv" and job.alignment[0].relations is None
