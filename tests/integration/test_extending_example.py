"""docs/extending.md's worked example: a worker type that is no embedding model (``feature-mlp``) teaches a TransE KB through pull.

It runs the way a user would: a TOML job file with a ``[strategy]`` table, submitted over the
coordinator's gRPC API to real Ray workers, beside the same student trained alone.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from kdmkb.services.client import CoordinatorClient, job_report
from kdmkb.services.config import load_job_file
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset

ROUNDS, PRETRAIN = 20, 10

JOB = """
[strategy]
name = "one-way"
teacher = "ex-mlp"
pretrain_rounds = {pretrain}
exchange = "pull"
candidates = "all"

[job]
rounds = {rounds}
steps_per_round = 10
alpha = 0.5
temperature = 2.0
checkpoint_every = 0

[[kb]]
name = "ex-mlp"
data = "kbs/mlp"
worker_type = "feature-mlp"
[kb.settings]
features = "profile"
hidden = 64

[[kb]]
name = "ex-b"
data = "kbs/b"
worker_type = "transe"
[kb.settings]
dim = 100
learning_rate = 0.005
negatives = 32

[[alignment]]
kbs = ["ex-mlp", "ex-b"]
entities = "kbs/alignments/mlp__b.entities.tsv"
relations = "kbs/alignments/mlp__b.relations.tsv"
"""


def write_relation_profile(folder: Path) -> None:
    """features/profile.npy: each entity's log-counts of (relation, as head) and (relation, as tail) in the KB's own train triples.

    Rows follow the folder's entities.tsv, so no profile.entities.tsv is needed.
    """
    entities = {line.split("\t")[0]: i for i, line in enumerate((folder / "entities.tsv").read_text(encoding="utf-8").splitlines())}
    relations = {line.split("\t")[0]: i for i, line in enumerate((folder / "relations.tsv").read_text(encoding="utf-8").splitlines())}
    counts = np.zeros((len(entities), 2 * len(relations)), dtype=np.float32)
    for line in (folder / "train.tsv").read_text(encoding="utf-8").splitlines():
        head, relation, tail = line.split("\t")
        counts[entities[head], relations[relation]] += 1
        counts[entities[tail], len(relations) + relations[relation]] += 1
    (folder / "features").mkdir(exist_ok=True)
    np.save(folder / "features" / "profile.npy", np.log1p(counts))


def test_a_feature_mlp_teaches_transe_through_pull(grpc_address, tmp_path):
    split_dataset(dataset_dir("umls"), tmp_path / "kbs", kbs=2, seed=0, names=["mlp", "b"], align="all")
    write_relation_profile(tmp_path / "kbs" / "mlp")
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(rounds=ROUNDS, pretrain=PRETRAIN), encoding="utf-8")
    job_file = load_job_file(path)
    assert job_file.strategy == "one-way" and job_file.strategy_settings["exchange"] == "pull"

    client = CoordinatorClient(grpc_address)
    try:
        taught = client.run(client.submit(job_file).job_id)
        alone = client.run(client.create_job(job_file, "none").job_id)
        with pytest.raises(grpc.RpcError) as raised:  # no embeddings: a plain refusal, not an internal error
            client.export("ex-mlp", tmp_path / "mlp.npz")
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no embeddings" in raised.value.details()
    finally:
        client.close()
    progress = taught.progress
    assert progress["ex-b"].query_bytes_sent > 0 and progress["ex-mlp"].soft_label_bytes_sent == progress["ex-b"].soft_label_bytes_received > 0
    assert progress["ex-mlp"].steps == PRETRAIN * 10  # the teacher is frozen once it teaches
    taught_metrics, alone_metrics = job_report(taught)["kbs"], job_report(alone)["kbs"]
    print(f"feature-mlp teacher MRR {taught_metrics['ex-mlp']['mrr']:.4f}; TransE student alone {alone_metrics['ex-b']['mrr']:.4f}, taught by pull {taught_metrics['ex-b']['mrr']:.4f}")
    assert taught.test_metrics["ex-b"].ranking == "exact"
    # the MLP ranks by its features alone: far above chance; and its answers make the student better
    assert taught_metrics["ex-mlp"]["mrr"] > 0.4, taught_metrics
    assert taught_metrics["ex-b"]["mrr"] > alone_metrics["ex-b"]["mrr"] + 0.02, (taught_metrics, alone_metrics)
