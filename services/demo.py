"""The embedded demo's job: settings chosen (docs/demo.md) so that the whole demo runs in about a minute on 2 cores."""

from __future__ import annotations

from kdmkb.services.config import JobFile
from kdmkb.services.split import SplitSummary, job_file_dict

DEMO_WORKER_SETTINGS = {"dim": 100, "learning_rate": 5e-3, "negatives": 32, "batch_size": 128}
DEMO_JOB_SETTINGS = {"rounds": 20, "steps_per_round": 10, "alpha": 0.5, "top_k": 10, "temperature": 2.0, "eval_every": 0, "checkpoint_every": 0}


def demo_job_file(summary: SplitSummary, *, seed: int = 0, rounds: int | None = None) -> JobFile:
    job = {**DEMO_JOB_SETTINGS, "seed": seed, **({"rounds": rounds} if rounds else {})}
    return JobFile.model_validate(job_file_dict(summary, worker_settings=DEMO_WORKER_SETTINGS, job=job, relative=False))
