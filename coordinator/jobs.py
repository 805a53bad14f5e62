"""A distillation job: its record (persisted) and the round loop that runs it in a thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

import ray

from kdmkb.coordinator.strategies import make_strategy
from kdmkb.kb_worker.worker import AlignmentView
from kdmkb.services import metrics
from kdmkb.services.config import JobSettings
from kdmkb.services.ray_runtime import unwrap

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STATES = ("CREATED", "RUNNING", *TERMINAL)


@dataclass
class Job:
    """Everything the coordinator knows of a job; persisted after every change."""

    strategy: str
    kbs: list[str]
    settings: dict
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "CREATED"
    round: int = 0
    error: str = ""
    progress: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    checkpoint_round: int = 0
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def total_rounds(self) -> int:
        return JobSettings.model_validate(self.settings).rounds

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Job":
        return cls(**raw)


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    kind: str  # state, started, round, evaluated, evaluating, finished, failed, stopped
    state: str
    round: int
    total_rounds: int
    progress: dict
    round_seconds: float = 0.0
    message: str = ""


class JobRunner(threading.Thread):
    """Runs a job's rounds: teach -> route soft labels -> train, then evaluate and checkpoint.

    One job's failure fails that job only: every error ends here, in the job's record.
    """

    def __init__(self, job: Job, workers: dict, views: dict[str, AlignmentView], store, on_change, resume: bool) -> None:
        super().__init__(name=f"job-{job.job_id}", daemon=True)
        self.job = job
        self.workers = workers
        self.views = views
        self.store = store
        self.on_change = on_change
        self.resume = resume
        self.stop_requested = threading.Event()
        self.interrupted = threading.Event()  # coordinator shutting down: leave the job resumable
        self._subscribers: list[queue.Queue] = []
        self._lock = threading.Lock()

    # -- events ----------------------------------------------------------------------------
    def subscribe(self) -> queue.Queue:
        channel: queue.Queue = queue.Queue()
        with self._lock:
            self._subscribers.append(channel)
        return channel

    def unsubscribe(self, channel: queue.Queue) -> None:
        with self._lock:
            if channel in self._subscribers:
                self._subscribers.remove(channel)

    def _emit(self, kind: str, round_seconds: float = 0.0, message: str = "") -> None:
        job = self.job
        job.updated_at = time.time()
        self.store.save_job(job.to_dict())
        self.on_change()
        event = JobEvent(job.job_id, kind, job.state, job.round, job.total_rounds, {k: dict(v) for k, v in job.progress.items()}, round_seconds, message)
        with self._lock:
            for channel in self._subscribers:
                channel.put(event)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        job = self.job
        try:
            settings = JobSettings.model_validate(job.settings)
            strategy = make_strategy(job.strategy, job.kbs, settings)
            self._configure(settings)
            job.state = "RUNNING"
            self._emit("started")
            for round_ in range(job.round, settings.rounds):
                if self.interrupted.is_set():
                    return
                if self.stop_requested.is_set():
                    job.state = "STOPPED"
                    self._emit("stopped", message="stopped on request")
                    return
                seconds = self._round(round_, strategy.plan(round_), settings)
                job.round = round_ + 1
                metrics.ROUND_SECONDS.labels(job.job_id).observe(seconds)
                metrics.JOB_ROUNDS.labels(job.job_id).set(job.round)
                if settings.eval_every and job.round % settings.eval_every == 0 and job.round < settings.rounds:
                    self._evaluate("valid")
                if settings.checkpoint_every and job.round % settings.checkpoint_every == 0:
                    self._checkpoint()
                self._emit("round", round_seconds=seconds)
            self._emit("evaluating", message="ranking the test split of every KB")
            job.test_metrics = self._evaluate("test")
            job.state = "SUCCEEDED"
            self._emit("finished")
        except Exception as error:  # noqa: BLE001 - the job fails, the coordinator lives on
            cause = unwrap(error)
            log.exception("job %s failed", job.job_id)
            job.state = "FAILED"
            job.error = f"{type(cause).__name__}: {cause}"
            self._emit("failed", message=job.error)

    def _configure(self, settings: JobSettings) -> None:
        distill = settings.distill().model_dump()
        ray.get([w.configure.remote(self.job.job_id, settings.seed, distill, self.views[kb]) for kb, w in self.workers.items()])
        if self.resume and self.job.checkpoint_round > 0:
            ray.get([w.load.remote(str(self.store.checkpoint_dir(self.job.job_id, kb))) for kb, w in self.workers.items()])
            self.job.round = self.job.checkpoint_round
        else:
            self.job.round = 0
        for kb in self.workers:
            self.job.progress.setdefault(kb, {"loss": 0.0, "kd_loss": 0.0, "steps": 0, "soft_label_bytes_sent": 0, "soft_label_bytes_received": 0})

    def _round(self, round_: int, plan, settings: JobSettings) -> float:
        """One round: every teacher's soft labels go, as Ray object references, to its students."""
        started = time.perf_counter()
        steps = settings.steps_per_round
        students = set(plan.students)
        inbound: dict[str, list] = {kb: [] for kb in plan.students}
        teach_stats = {}
        for teacher in plan.teachers:
            recipients = [s for s in plan.students if s != teacher and s in self.views[teacher].peers]
            if not recipients:
                continue
            refs = self.workers[teacher].teach.options(num_returns=1 + len(recipients)).remote(round_, steps, recipients)
            teach_stats[teacher] = refs[0]
            for student, ref in zip(recipients, refs[1:]):
                inbound[student].append(ref)
        train = {kb: self.workers[kb].train.remote(round_, steps, *inbound[kb]) for kb in students}
        results = dict(zip(train, ray.get(list(train.values()))))
        stats = dict(zip(teach_stats, ray.get(list(teach_stats.values()))))
        for teacher, stat in stats.items():
            for student, size in stat["bytes"].items():
                metrics.ROUTED_BYTES.labels(teacher, student, self.job.job_id).inc(size)
                self.job.progress[teacher]["soft_label_bytes_sent"] += size
                self.job.progress[student]["soft_label_bytes_received"] += size
        for kb, result in results.items():
            self.job.progress[kb].update(loss=result["loss"], kd_loss=result["kd_loss"], steps=result["steps"])
        return time.perf_counter() - started

    def _evaluate(self, split: str) -> dict:
        results = dict(zip(self.workers, ray.get([w.evaluate.remote(split) for w in self.workers.values()])))
        if split == "valid":
            for kb, result in results.items():
                self.job.progress[kb]["valid"] = result
            self._emit("evaluated")
        return results

    def _checkpoint(self) -> None:
        ray.get([w.save.remote(str(self.store.checkpoint_dir(self.job.job_id, kb))) for kb, w in self.workers.items() if self.store.root])
        self.job.checkpoint_round = self.job.round
