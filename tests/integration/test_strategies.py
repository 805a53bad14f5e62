"""Every strategy runs through the coordinator on real Ray actors, with the roles it plans."""

from __future__ import annotations

import pytest

from kdmkb.coordinator.service import Coordinator
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset

WORKER = {"dim": 16, "batch_size": 64, "negatives": 8, "learning_rate": 0.01}
ROUNDS, STEPS, PRETRAIN = 4, 5, 2


@pytest.fixture(scope="module")
def three_kbs(ray_session, tmp_path_factory):
    summary = split_dataset(dataset_dir("nations"), tmp_path_factory.mktemp("strategies") / "kbs", kbs=3, seed=1, names=["s1", "s2", "s3"])
    coordinator = Coordinator()
    for name in summary.kb_names:
        coordinator.register_kb(name, str(summary.out_dir / name), "transe", WORKER)
    for a, b in summary.pair_counts:
        stem = summary.out_dir / "alignments" / f"{a}__{b}"
        coordinator.register_alignment(a, b, f"{stem}.entities.tsv", f"{stem}.relations.tsv")
    yield coordinator, list(summary.kb_names)
    coordinator.shutdown()


def run(coordinator, strategy, kbs, strategy_settings):
    job = coordinator.create_job(strategy, kbs, {"rounds": ROUNDS, "steps_per_round": STEPS, "checkpoint_every": 0}, strategy_settings)
    coordinator.start_job(job.job_id)
    job = coordinator.wait(job.job_id, timeout=300)
    assert job.state == "SUCCEEDED", job.error
    assert set(job.test_metrics) == set(kbs)
    return job


@pytest.mark.parametrize(
    "strategy, settings, steps, receives",
    [
        # steps each KB trained; whether each KB received soft labels
        ("none", {}, {"s1": 20, "s2": 20, "s3": 20}, {"s1": False, "s2": False, "s3": False}),
        ("one-way", {"teacher": "s2", "pretrain_rounds": PRETRAIN}, {"s1": 20, "s2": 10, "s3": 20}, {"s1": True, "s2": False, "s3": True}),
        ("one-way", {"teacher": "s2", "pretrain_rounds": PRETRAIN, "exchange": "pull"}, {"s1": 20, "s2": 10, "s3": 20}, {"s1": True, "s2": False, "s3": True}),
        ("sequential", {"pretrain_rounds": PRETRAIN}, {"s1": 15, "s2": 15, "s3": 20}, {"s1": True, "s2": True, "s3": True}),
        ("cooperative", {}, {"s1": 20, "s2": 20, "s3": 20}, {"s1": True, "s2": True, "s3": True}),
        ("cooperative", {"exchange": "pull", "candidates": "all"}, {"s1": 20, "s2": 20, "s3": 20}, {"s1": True, "s2": True, "s3": True}),
    ],
)
def test_strategy_roles(three_kbs, strategy, settings, steps, receives):
    coordinator, kbs = three_kbs
    job = run(coordinator, strategy, kbs, settings)
    assert {kb: p["steps"] for kb, p in job.progress.items()} == steps
    assert {kb: p["soft_label_bytes_received"] > 0 for kb, p in job.progress.items()} == receives
    sent = sum(p["soft_label_bytes_sent"] for p in job.progress.values())
    assert sent == sum(p["soft_label_bytes_received"] for p in job.progress.values())
    pull = settings.get("exchange") == "pull"
    assert {kb: p["query_bytes_sent"] > 0 for kb, p in job.progress.items()} == (receives if pull else dict.fromkeys(kbs, False))
