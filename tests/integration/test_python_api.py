"""The Python API as the README shows it: its example runs as written, then everything it promises is checked.

One job (packaged nations cut into 2 KBs, 2 rounds of 5 steps) serves the module; ``kdmkb run --out``
runs one more (1 KB, 1 round) to show the command leaves the same files, and one runs on the session's
coordinator.
"""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

import kdmkb
from kdmkb.services.cli import app
from kdmkb.services.config import load_job_file
from kdmkb.services.errors import ConfigError, NotFoundError

README = Path(__file__).resolve().parents[2] / "README.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FILES = {"job.toml", "report.json", "history.jsonl", "history.csv", "loss.png", "valid_mrr.png"}
METRICS = {"mrr", "mr", "hits@1", "hits@3", "hits@10"}


def readme_example() -> str:
    [code] = re.findall(r"## Python API\n.*?```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    return code


@pytest.fixture(scope="module")
def example(tmp_path_factory, ray_session) -> dict:
    """The README's example, run as written in a fresh folder: its variables, and the folder."""
    folder = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        names: dict = {}
        exec(compile(readme_example(), str(README), "exec"), names)  # noqa: S102 - the README's own code
    return {**names, "folder": folder}


def test_the_metrics_come_per_kb(example):
    records = example["result"].metrics_records
    assert [record["kb"] for record in records] == ["kb1", "kb2"]
    for record in records:
        assert record["strategy"] == "cooperative" and METRICS <= set(record)
        assert 0 < record["mrr"] <= 1 and 0 <= record["hits@1"] <= record["hits@3"] <= record["hits@10"] <= 1


def test_a_dataframe_where_pandas_is_installed(example):
    result = example["result"]
    try:
        import pandas  # noqa: F401 - optional
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            result.metrics_frame
    else:
        assert list(result.metrics_frame["kb"]) == ["kb1", "kb2"] and len(result.history_frame) == 4


def test_the_history_has_every_round(example):
    history = example["result"].history
    assert [record.round for record in history] == [1, 2]
    for record in history:
        assert set(record.kbs) == {"kb1", "kb2"} and record.seconds > 0
        for kb in record.kbs.values():
            assert np.isfinite(kb.loss) and kb.kd_loss > 0 and kb.soft_label_bytes_sent > 0 and kb.soft_label_bytes_received > 0 and kb.train_triples > 0
    assert [record.kbs["kb1"].steps for record in history] == [5, 10]
    # eval_every=1 validates after every round but the last (the test split ends the job)
    assert 0 < history[0].kbs["kb1"].valid["mrr"] <= 1 and history[1].kbs["kb1"].valid is None
    # what one KB sent in a round the other received
    assert all(r.kbs["kb1"].soft_label_bytes_sent == r.kbs["kb2"].soft_label_bytes_received for r in history)


def test_the_embeddings_match_their_names(example, vocabulary_names):
    vectors = example["vectors"]
    folder = example["folder"] / "nations-kbs" / "kb1"
    assert vectors.entity_names == vocabulary_names(folder / "entities.tsv") and vectors.relation_names == vocabulary_names(folder / "relations.tsv")
    assert vectors.entity_vectors.shape == (len(vectors.entity_names), 16) and vectors.relation_vectors.shape == (len(vectors.relation_names), 16)
    assert vectors.worker_type == "transe" and vectors.layout == {"entity": "[dim] real", "relation": "[dim] real"}


def brute_force(vectors, head: str | None, relation: str, tail: str | None, k: int) -> list[str]:
    """The top-k of TransE's -||h + r - t||_1 over every entity, from the exported (live) vectors."""
    entities = vectors.entity_vectors
    r = vectors.relation_vectors[vectors.relation_names.index(relation)]
    if head is not None:
        distance = np.abs(entities[vectors.entity_names.index(head)] + r - entities).sum(axis=1)
    else:
        distance = np.abs(entities + r - entities[vectors.entity_names.index(tail)]).sum(axis=1)
    return [vectors.entity_names[i] for i in np.argsort(distance, kind="stable")[:k]]


def test_predict_ranks_tails_and_heads_with_the_final_weights(example, kb_triples):
    """The model rebuilt from the final checkpoint ranks as the vectors exported from the live worker do."""
    vectors, tails, heads = example["vectors"], example["tails"], example["heads"]
    assert len(tails) == len(heads) == 5
    assert [p.entity for p in tails] == brute_force(vectors, "usa", "embassy", None, 5)
    assert [p.entity for p in heads] == brute_force(vectors, None, "embassy", "uk", 5)
    for answers in (tails, heads):
        assert [p.score for p in answers] == sorted((p.score for p in answers), reverse=True)
    facts = kb_triples(example["folder"] / "nations-kbs" / "kb1")
    assert [p.known for p in tails] == [("usa", "embassy", p.entity) in facts for p in tails]
    assert [p.known for p in heads] == [(p.entity, "embassy", "uk") in facts for p in heads]


def test_the_plot_has_a_panel_per_curve(example):
    loss, valid = example["figure"].axes
    assert [line.get_label() for line in loss.lines] == ["kb1 (cooperative)", "kb2 (cooperative)"]
    assert list(loss.lines[0].get_xdata()) == [1, 2] and list(valid.lines[0].get_xdata()) == [1]


def check_run_folder(folder: Path, rounds: int, kbs: tuple[str, ...]) -> dict:
    """The files a saved run holds, each readable: returns the report."""
    assert RUN_FILES <= {path.name for path in folder.iterdir()}
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert report["state"] == "SUCCEEDED" and report["rounds"] == rounds and set(report["kbs"]) == set(kbs)
    job = tomllib.loads((folder / "job.toml").read_text(encoding="utf-8"))
    assert job["job"]["rounds"] == rounds and job["job"]["checkpoint_every"] == 10  # a default, written out
    assert {"dim", "negatives", "learning_rate", "device"} <= set(job["kb"][0]["settings"])
    assert len((folder / "history.jsonl").read_text(encoding="utf-8").splitlines()) == rounds
    with (folder / "history.csv").open(encoding="utf-8", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == rounds * len(kbs)
    for plot in ("loss.png", "valid_mrr.png"):
        assert (folder / plot).read_bytes()[:8] == PNG_MAGIC
    for kb in kbs:
        assert [path.name for path in (folder / "checkpoints" / kb).iterdir()] == [f"round-{rounds:06d}.pt"]
        with np.load(folder / "embeddings" / f"{kb}.npz", allow_pickle=False) as arrays:
            assert arrays["entity_vectors"].shape[0] == len(arrays["entity_names"])
            assert json.loads(str(arrays["metadata"]))["worker_type"] == "transe"
    return report


def test_the_run_folder_holds_everything(example):
    report = check_run_folder(example["folder"] / "nations-run", 2, ("kb1", "kb2"))
    assert report == example["result"].report
    assert load_job_file(example["folder"] / "nations-run" / "job.toml") == example["result"].job.model_validate(example["result"].job.filled())


def test_load_reopens_the_same_result(example):
    result, again = example["result"], example["again"]
    assert again.report == result.report and again.history == result.history and again.metrics_records == result.metrics_records
    for kb in result.kbs:
        before, after = result.embeddings(kb), again.embeddings(kb)
        assert after.entity_names == before.entity_names and after.relation_names == before.relation_names and after.layout == before.layout
        np.testing.assert_array_equal(after.entity_vectors, before.entity_vectors)
        np.testing.assert_array_equal(after.relation_vectors, before.relation_vectors)
    assert again.predict("kb1", "usa", "embassy", k=5) == example["tails"]
    assert again.predict("kb1", None, "embassy", tail="uk", k=5) == example["heads"]


def test_mistakes_are_named(example):
    result = example["result"]
    with pytest.raises(ConfigError, match="kb: no KB 'kb9' in this result; its KBs: kb1, kb2"):
        result.predict("kb9", "usa", "embassy")
    with pytest.raises(NotFoundError, match="entity 'atlantis' is not in KB 'kb1'"):
        result.predict("kb1", "atlantis", "embassy")
    with pytest.raises(ConfigError, match="head, tail: give a head"):
        result.predict("kb1", "usa", "embassy", tail="uk")
    with pytest.raises(ConfigError, match="already exists and is not an empty directory"):
        result.save(example["folder"] / "nations-run")
    with pytest.raises(ConfigError, match="is a folder; give its job file"):
        kdmkb.run(example["folder"] / "nations-kbs")


def test_kdmkb_run_out_leaves_the_same_files(example, tmp_path):
    job = example["split"].save(tmp_path / "kbs")
    raw = tomllib.loads(job.read_text(encoding="utf-8"))
    assert raw["kb"][0]["data"] == "kb1" and (tmp_path / "kbs" / "kb1" / "train.tsv").is_file()  # a copy, relative to its job file
    raw.update(strategy="none", job={"rounds": 1, "steps_per_round": 3}, kb=raw["kb"][:1], alignment=[])  # one KB: one worker to start
    raw["kb"][0]["settings"] = {"dim": 16, "batch_size": 64}
    job.write_text(tomli_w.dumps(raw), encoding="utf-8")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(job), "--out", str(out)])
    assert result.exit_code == 0, result.output
    check_run_folder(out, 1, ("kb1",))
    assert f"written to {out}: checkpoints/, embeddings/, history.csv, history.jsonl, job.toml, loss.png, report.json, valid_mrr.png" in result.stdout


def test_a_run_on_a_running_coordinator(grpc_address, tmp_path):
    """On a running coordinator the result has the embeddings but no checkpoints: predict asks that coordinator, for tails and heads."""
    split = kdmkb.split(kdmkb.dataset_dir("nations"), kbs=2, seed=1, names=["remote1", "remote2"])
    job = split.job(strategy="none", rounds=1, steps_per_round=3, worker_settings={"dim": 16, "batch_size": 64})
    job = job.model_copy(update={"kb": job.kb[:1], "alignment": []})  # one KB: one worker to start
    result = kdmkb.run(job, coordinator=grpc_address, progress=False)
    assert result.checkpoints == {} and [record.round for record in result.history] == [1]
    vectors = result.embeddings("remote1")
    assert vectors.entity_vectors.shape == (len(vectors.entity_names), 16)
    tails = result.predict("remote1", "usa", "embassy", k=3)
    assert [p.entity for p in tails] == brute_force(vectors, "usa", "embassy", None, 3)  # the KB's weights are still the job's
    heads = result.predict("remote1", None, "embassy", k=3, tail="uk")
    assert [p.entity for p in heads] == brute_force(vectors, None, "embassy", "uk", 3)
