"""A worker started outside a job gets back the model a job left: the newest usable checkpoint, or no model at all."""

from __future__ import annotations

import pytest
import torch

from kdmkb.kb_worker.worker import KBWorker
from kdmkb.services.config import DistillSettings
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.errors import PreconditionError

SETTINGS = {"dim": 8, "batch_size": 64}


def weights(worker: KBWorker) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in worker.model.modules().state_dict().items()}


@pytest.fixture
def trained(tmp_path):
    """A TransE worker trained two rounds, checkpointed after each; returns its folder and each round's weights."""
    worker = KBWorker("nations", dataset_dir("nations"), "transe", SETTINGS)
    worker.configure("job", 3)
    saved = {}
    for round_ in (1, 2):
        worker.train(round_ - 1, 5)
        worker.save(tmp_path, round_, keep=3)
        saved[round_] = weights(worker)
    assert any(not torch.equal(saved[1][key], saved[2][key]) for key in saved[1])
    return tmp_path, saved


def test_the_newest_usable_checkpoint_is_restored(trained):
    folder, saved = trained
    fresh = KBWorker("nations", dataset_dir("nations"), "transe", SETTINGS)
    assert fresh.restore_model("job", 3, DistillSettings(), folder, [2, 1]) == {"round": 2, "unusable": []}
    assert all(torch.equal(value, saved[2][key]) for key, value in weights(fresh).items())

    newest = folder / "round-000002.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    again = KBWorker("nations", dataset_dir("nations"), "transe", SETTINGS)
    restored = again.restore_model("job", 3, DistillSettings(), folder, [2, 1])
    assert restored["round"] == 1 and [round_ for round_, _ in restored["unusable"]] == [2]
    assert "round-000002.pt" in restored["unusable"][0][1]
    assert all(torch.equal(value, saved[1][key]) for key, value in weights(again).items())


def test_no_usable_checkpoint_leaves_no_model_rather_than_an_untrained_one(trained):
    folder, _ = trained
    for round_ in (1, 2):
        (folder / f"round-{round_:06d}.pt").write_bytes(b"not a checkpoint")
    worker = KBWorker("nations", dataset_dir("nations"), "transe", SETTINGS)
    assert worker.restore_model("job", 3, DistillSettings(), folder, [2, 1])["round"] is None
    with pytest.raises(PreconditionError, match="no model yet"):
        worker.predict("usa", "treaties", 3)
