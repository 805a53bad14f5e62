"""Heterogeneous cooperation: a kd-distmult KB and a transe KB distil into each other through real Ray actors."""

from __future__ import annotations

import pytest

from kdmkb.coordinator.service import Coordinator
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset

KRONECKER = {"dim": 256, "regime": "KvsAll", "batch_size": 128, "learning_rate": 0.01}
TRANSE = {"dim": 100, "learning_rate": 5e-3, "negatives": 32, "batch_size": 128}
JOB = {"rounds": 20, "steps_per_round": 10, "alpha": 0.5, "top_k": 10, "temperature": 2.0, "eval_every": 0, "checkpoint_every": 0}
# The gain of one seed varies (measured +0.009 to +0.045 over seeds 0-3), so the test judges a mean over seeds.
SEEDS = (0, 1, 2)
NAMES = {"kd": ("kron-kd", "kd-distmult", KRONECKER), "transe": ("kron-transe", "transe", TRANSE)}


@pytest.fixture(scope="module")
def results(ray_session, tmp_path_factory):
    """Per seed, test metrics and progress of the same 2-KB job under strategies none and cooperative."""
    summary = split_dataset(dataset_dir("umls"), tmp_path_factory.mktemp("kronecker") / "umls2", kbs=2, seed=0)
    coordinator = Coordinator()
    try:
        names = []
        for folder, (name, worker_type, settings) in zip(summary.kb_names, NAMES.values()):
            coordinator.register_kb(name, str(summary.out_dir / folder), worker_type, settings)
            names.append(name)
        (a, b), = summary.pair_counts
        stem = summary.out_dir / "alignments" / f"{a}__{b}"
        coordinator.register_alignment(names[0], names[1], f"{stem}.entities.tsv", f"{stem}.relations.tsv")
        jobs = {}
        for seed in SEEDS:
            for strategy in ("none", "cooperative"):
                job = coordinator.create_job(strategy, names, {**JOB, "seed": seed})
                coordinator.start_job(job.job_id)
                jobs.setdefault(seed, {})[strategy] = coordinator.wait(job.job_id, timeout=120)
    finally:
        coordinator.shutdown()
    return jobs


def test_cooperation_completes_and_exchanges_both_ways(results):
    for jobs in results.values():
        for strategy, job in jobs.items():
            assert job.state == "SUCCEEDED", (strategy, job.error)
            assert {kb: p["steps"] for kb, p in job.progress.items()} == {"kron-kd": 200, "kron-transe": 200}
        received = {kb: p["soft_label_bytes_received"] for kb, p in jobs["cooperative"].progress.items()}
        assert all(size > 0 for size in received.values()), received
        assert all(p["soft_label_bytes_received"] == 0 for p in jobs["none"].progress.values())


def test_cooperation_improves_over_training_alone(results):
    gains: dict[str, list[float]] = {}
    for seed, jobs in results.items():
        mrr = {strategy: {kb: m["mrr"] for kb, m in job.test_metrics.items()} for strategy, job in jobs.items()}
        print(f"seed {seed}: test MRR none {mrr['none']}, cooperative {mrr['cooperative']}")
        for kb in mrr["none"]:
            gains.setdefault(kb, []).append(mrr["cooperative"][kb] - mrr["none"][kb])
    # measured (seeds 0, 1, 2): kd-distmult +0.009, +0.020, +0.025; transe +0.009, +0.017, +0.030
    assert all(gain > 0 for kb_gains in gains.values() for gain in kb_gains), gains
    assert all(sum(kb_gains) / len(kb_gains) >= 0.01 for kb_gains in gains.values()), gains
