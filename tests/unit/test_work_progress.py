"""A round's work says what it is and how far while it runs, so a round of an hour is not an hour of silence."""

from __future__ import annotations

import io

import pytest

from kdmkb.coordinator.jobs import format_seconds, work_text
from kdmkb.kb_worker.worker import AlignmentView, KBWorker
from kdmkb.services.datasets import dataset_dir

STEPS = 4


@pytest.fixture
def worker():
    worker = KBWorker("nations", dataset_dir("nations"), "transe", {"dim": 8, "batch_size": 64})
    entities, relations = len(worker.kb.entities), len(worker.kb.relations)
    ids = {name: i for i, name in enumerate(worker.kb.entities.names)}, {name: i for i, name in enumerate(worker.kb.relations.names)}
    worker.configure("job", 3, {"top_k": 3}, AlignmentView(*ids, peers={"peer": (list(range(entities)), list(range(relations)))}))
    return worker


def watching(worker, monkeypatch, method: str) -> list:
    """What :meth:`KBWorker.work_progress` says each time the model's ``method`` is called."""
    seen, original = [], getattr(worker.model, method)

    def watched(*args, **kwargs):
        seen.append(worker.work_progress())
        return original(*args, **kwargs)

    monkeypatch.setattr(worker.model, method, watched)
    return seen


def test_training_counts_its_steps_while_it_runs(worker, monkeypatch):
    seen = watching(worker, monkeypatch, "train_scores")
    worker.train(0, STEPS)
    assert [(s["work"], s["done"], s["total"], s["unit"], s["taken_up"]) for s in seen] == [("training", step, STEPS, "steps", 0) for step in range(STEPS)]
    assert seen[-1]["seconds"] >= seen[0]["seconds"] >= 0
    assert worker.work_progress() is None


def test_teaching_and_asking_say_whom_they_serve_uncounted(worker, monkeypatch):
    seen = watching(worker, monkeypatch, "top_candidates")
    worker.teach(0, STEPS, ["peer"])
    assert seen and {(s["work"], s["total"]) for s in seen} == {("teaching peer", 0)}
    assert worker.work_progress() is None
    seen.clear()
    worker.ask(1, STEPS, "peer", "listed")
    assert seen and {(s["work"], s["total"]) for s in seen} == {("asking peer", 0)}
    assert worker.work_progress() is None


def test_a_failed_step_leaves_no_work_under_way(worker, monkeypatch):
    def failing(batch, requests):
        raise RuntimeError("boom")

    monkeypatch.setattr(worker.model, "train_scores", failing)
    with pytest.raises(RuntimeError, match="boom"):
        worker.train(0, STEPS)
    assert worker.work_progress() is None


def test_work_text_gives_each_kb_its_work_and_the_eta_of_this_sittings_pace():
    statuses = {
        "a": {"work": "ranking test", "unit": "triples", "total": 661, "done": 192, "taken_up": 64, "seconds": 300.0},  # 128 in 300 s: 469 left in 1,099 s
        "b": None,
        "c": {"work": "ranking test", "unit": "triples", "total": 20_466, "done": 0, "taken_up": 0, "seconds": 2.0},
    }
    assert work_text(statuses, "done") == "a ranking test 192/661 triples, ETA 18 min; b done; c ranking test 0/20,466 triples, ETA ?"
    round_ = {
        "text": {"work": "training", "unit": "steps", "total": 65, "done": 13, "taken_up": 0, "seconds": 130.0},
        "struct": {"work": "teaching text", "unit": "", "total": 0, "done": 0, "taken_up": 0, "seconds": 250.0},
        "other": None,
    }
    assert work_text(round_, "waiting") == "text training 13/65 steps, ETA 9 min; struct teaching text, 4 min; other waiting"
    assert [format_seconds(s) for s in (4.4, 59.4, 90, 3599, 3600, 7500)] == ["4 s", "59 s", "2 min", "1 h 00 min", "1 h 00 min", "2 h 05 min"]


def test_the_rounds_bar_times_rounds_only_and_shows_the_round_under_way():
    """Work events come every 10 s within a round: they change the bar's words, not its count, rate or ETA."""
    from types import SimpleNamespace

    from kdmkb.services.api import RoundsBar

    clock = [0.0]
    rounds = RoundsBar("none", 20, 0, file=io.StringIO())
    rounds.bar._time = lambda: clock[0]
    rounds.bar.start_t = rounds.bar.last_print_t = 0.0
    for round_ in range(3):
        for step in range(10):
            clock[0] += 10
            rounds.observe(SimpleNamespace(kind="working", round=round_, progress={}, message=f"round {round_ + 1}/20: kb training {step}/10 steps, ETA ?"))
        assert rounds.bar.desc.removesuffix(": ") == f"none (round {round_ + 1}/20: kb training 9/10 steps, ETA ?)"
        rounds.observe(SimpleNamespace(kind="round", round=round_ + 1, progress={}, message=""))
        assert rounds.bar.desc.removesuffix(": ") == "none"
    assert rounds.bar.n == 3 and rounds.bar.format_dict["rate"] == pytest.approx(1 / 100)  # a round each 100 s
    rounds.close()
