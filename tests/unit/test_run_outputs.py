"""What a run leaves: the per-round history from job events (JSON lines, CSV), embeddings files, the filled job file."""

from __future__ import annotations

import csv
import tomllib

import numpy as np
import pytest
import tomli_w

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.config import JobFile
from kdmkb.services.errors import DataError
from kdmkb.services.history import CSV_COLUMNS, HistoryRecorder, Round, read_jsonl, write_csv, write_jsonl
from kdmkb.services.outputs import Embeddings, figure


def event(kind: str, round_: int, seconds: float = 0.0, **progress: dict) -> pb.JobEvent:
    return pb.JobEvent(job_id="j", kind=kind, round=round_, total_rounds=2, round_seconds=seconds, progress={kb: pb.KBProgress(**p) for kb, p in progress.items()})


def resumed_job_events() -> list[pb.JobEvent]:
    """A job watched from round 3 on (earlier rounds sent 100 and 40 bytes), evaluated after its first watched round."""
    before = {"a": {"soft_label_bytes_sent": 100, "train_triples": 640}, "b": {"soft_label_bytes_received": 100, "soft_label_bytes_sent": 40}}
    after = {
        "a": {"loss": 0.9, "kd_loss": 0.3, "steps": 40, "soft_label_bytes_sent": 130, "soft_label_bytes_received": 7, "train_triples": 960, "train_seconds": 0.25},
        "b": {"loss": 1.1, "steps": 40, "soft_label_bytes_received": 130, "soft_label_bytes_sent": 47},
    }
    return [
        event("state", 3, a=before["a"], b=before["b"]),
        event("started", 3, a=before["a"], b=before["b"]),
        # the coordinator evaluates after a round's training, before that round's own event
        event("evaluated", 4, a={**after["a"], "valid": pb.Metrics(mrr=0.5, mr=4.0, hits_at_1=0.25, hits_at_3=0.5, hits_at_10=1.0)}, b={**after["b"], "valid": pb.Metrics(mrr=0.2)}),
        event("round", 4, 1.5, a=after["a"], b=after["b"]),
        event(
            "round",
            5,
            2.0,
            a={"loss": 0.8, "kd_loss": 0.2, "steps": 50, "soft_label_bytes_sent": 150, "soft_label_bytes_received": 7, "train_triples": 1280, "train_seconds": 0.5},
            b={"loss": 1.0, "steps": 50, "soft_label_bytes_received": 150, "soft_label_bytes_sent": 50},
        ),
        event("evaluating", 5),
        event("finished", 5),
    ]


@pytest.fixture
def rounds() -> list[Round]:
    recorder = HistoryRecorder()
    for each in resumed_job_events():
        recorder.observe(each)
    return recorder.rounds


def test_a_round_holds_what_it_added_and_the_validation_it_ended_with(rounds):
    assert [(r.round, r.seconds) for r in rounds] == [(4, 1.5), (5, 2.0)]
    a4, b4 = rounds[0].kbs["a"], rounds[0].kbs["b"]
    # totals 130 / 960 after round 4, 100 / 640 before it (the "state" event of the resumed job)
    assert (a4.soft_label_bytes_sent, a4.soft_label_bytes_received, a4.train_triples, a4.train_seconds) == (30, 7, 320, 0.25)
    assert (b4.soft_label_bytes_sent, b4.soft_label_bytes_received) == (7, 30)
    assert (a4.loss, a4.kd_loss, a4.steps) == (0.9, pytest.approx(0.3), 40)
    assert a4.valid == {"mrr": 0.5, "mr": 4.0, "hits@1": 0.25, "hits@3": 0.5, "hits@10": 1.0}
    assert b4.valid["mrr"] == pytest.approx(0.2)
    a5, b5 = rounds[1].kbs["a"], rounds[1].kbs["b"]
    assert (a5.soft_label_bytes_sent, a5.soft_label_bytes_received, a5.train_triples, a5.train_seconds) == (20, 0, 320, 0.25)
    assert (b5.soft_label_bytes_sent, b5.soft_label_bytes_received) == (3, 20)
    assert a5.valid is None and b5.valid is None  # not evaluated after round 5


def test_json_lines_read_back_equal(tmp_path, rounds):
    path = write_jsonl(tmp_path / "history.jsonl", rounds)
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(rounds)
    assert read_jsonl(path) == rounds


def test_a_damaged_json_line_is_named(tmp_path, rounds):
    path = write_jsonl(tmp_path / "history.jsonl", rounds)
    path.write_text(path.read_text(encoding="utf-8") + '{"round": 6}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"history.jsonl line 3: not a history record"):
        read_jsonl(path)


def test_csv_has_a_row_per_round_and_kb(tmp_path, rounds):
    with write_csv(tmp_path / "history.csv", rounds).open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert [(row["round"], row["kb"]) for row in rows] == [("4", "a"), ("4", "b"), ("5", "a"), ("5", "b")]
    assert rows[0]["soft_label_bytes_sent"] == "30" and rows[0]["round_seconds"] == "1.5" and rows[0]["valid_mrr"] == "0.5"
    assert rows[0]["valid_hits@10"] == "1.0" and rows[3]["soft_label_bytes_received"] == "20"
    assert rows[2]["valid_mrr"] == rows[2]["valid_hits@1"] == ""  # round 5 was not evaluated


def test_embeddings_round_trip_with_their_metadata_and_no_pickle(tmp_path):
    vectors = Embeddings("a", "complex", {"entity": "[real | imaginary]"}, ["e0", "e1"], np.arange(8, dtype=np.float32).reshape(2, 4), ["r0"], np.ones((1, 4), np.float32))
    path = vectors.save(tmp_path / "a.npz")
    with np.load(path, allow_pickle=False) as arrays:
        assert set(arrays.files) == {"metadata", "entity_names", "entity_vectors", "relation_names", "relation_vectors"}
    again = Embeddings.load(path)
    assert (again.kb, again.worker_type, again.layout, again.entity_names, again.relation_names) == ("a", "complex", {"entity": "[real | imaginary]"}, ["e0", "e1"], ["r0"])
    np.testing.assert_array_equal(again.entity_vectors, vectors.entity_vectors)
    assert again.metadata()["shapes"] == {"entity": [2, 4], "relation": [1, 4]}


def test_an_embeddings_file_of_something_else_is_named(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(DataError, match="other.npz: not a kdmkb embeddings file"):
        Embeddings.load(tmp_path / "other.npz")


def test_the_plots_draw_each_kb_and_its_baseline_dashed(rounds):
    shown = figure(["loss", "valid_mrr"], rounds, "cooperative", rounds[:1], "none")
    loss, valid = shown.axes
    assert [line.get_label() for line in loss.lines] == ["a (cooperative)", "a (none)", "b (cooperative)", "b (none)"]
    assert [line.get_linestyle() for line in loss.lines] == ["-", "--", "-", "--"]
    assert loss.lines[0].get_color() == loss.lines[1].get_color()
    assert list(loss.lines[0].get_ydata()) == [0.9, 0.8]
    assert list(valid.lines[0].get_xdata()) == [4]  # only round 4 ended with a validation


def test_the_filled_job_file_writes_every_default_and_reads_back_equal(tmp_path):
    job = JobFile.model_validate({"kb": [{"name": "a", "data": str(tmp_path)}], "job": {"rounds": 3}})
    filled = job.filled()
    assert filled["job"]["rounds"] == 3 and filled["job"]["steps_per_round"] == 20  # set, and a default
    assert filled["kb"][0]["settings"]["dim"] == 100 and filled["strategy_settings"]["exchange"] == "push"
    assert "margin" not in filled["kb"][0]["settings"]  # None (the model's own default) has no TOML form
    again = JobFile.model_validate(tomllib.loads(tomli_w.dumps(filled)))
    assert again.filled() == filled
