"""A KB actor answers Predict from a snapshot of its model: during a long round, at once, with the weights from before it."""

from __future__ import annotations

import time

import ray

from kdmkb.kb_worker.actor import spawn_worker
from kdmkb.kb_worker.worker_types import WORKER_TYPES

LONG_ROUND = 4000  # steps: seconds of training on the tiny KB, so that Predict lands inside the round


def test_predict_answers_during_a_round_from_the_weights_before_it(ray_session, nations_split, worker_settings):
    settings = WORKER_TYPES.get("transe").validate_settings(worker_settings)
    actor = spawn_worker("snap", str(nations_split.out_dir / "left"), "transe", settings)
    try:
        ray.get(actor.open.remote(), timeout=120)
        ray.get(actor.configure.remote("job", 0), timeout=120)
        ray.get(actor.train.remote(0, 5), timeout=120)
        before = ray.get(actor.predict.remote("usa", "embassy", 5), timeout=60)

        round_ = actor.train.remote(1, LONG_ROUND)
        time.sleep(0.5)  # the round has begun
        started = time.perf_counter()
        during = ray.get(actor.predict.remote("usa", "embassy", 5), timeout=60)
        waited = time.perf_counter() - started
        ready, _ = ray.wait([round_], timeout=0)
        assert not ready, f"the round ended before Predict answered ({waited:.2f} s): make LONG_ROUND longer"
        assert during == before  # the snapshot: the weights after round 0, not half-updated ones

        ray.get(round_, timeout=600)
        after = ray.get(actor.predict.remote("usa", "embassy", 5), timeout=60)
        assert [p["score"] for p in after] != [p["score"] for p in before]  # refreshed after the round
    finally:
        ray.kill(actor)
