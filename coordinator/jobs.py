"""A distillation job: its record (persisted) and the round loop that runs it in a thread."""

from __future__ import annotations

import copy
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

import ray

from kdmkb.coordinator.strategies import RoundPlan, RoundResults, make_strategy
from kdmkb.kb_worker.alignment_view import AlignmentView
from kdmkb.services import metrics
from kdmkb.services.config import JobSettings
from kdmkb.services.errors import DataError, UnavailableError
from kdmkb.services.ray_runtime import unwrap

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # worker restarts within one run of a job before it fails
WORK_POLL_SECONDS = 10.0  # how often the work under way is reported ("working" events in a round, "ranking" ones in an evaluation)
# A KB worker died: the actor itself, or a teacher's posted soft labels with it (their owner) before its students read them.
WORKER_ENDED = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STATES = ("CREATED", "RUNNING", *TERMINAL)


@dataclass
class Job:
    """Everything the coordinator knows of a job; persisted after every change."""

    strategy: str
    kbs: list[str]
    settings: dict
    strategy_settings: dict = field(default_factory=dict)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "CREATED"
    round: int = 0
    error: str = ""
    progress: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    checkpoint_round: int = 0
    # round (as text: JSON keys) -> the job's side of that round's checkpoint: progress and strategy state
    checkpoints: dict = field(default_factory=dict)
    # each KB's registration when the job was created: a KB registered again with other settings stops it from running
    kb_specs: dict = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def total_rounds(self) -> int:
        return JobSettings.model_validate(self.settings).rounds

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> str:
        """What makes two jobs the same run: strategy, KBs and both settings, as stored (JSON)."""
        return json.dumps([self.strategy, self.kbs, self.settings, self.strategy_settings], sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict) -> "Job":
        return cls(**raw)

    def new_progress(self) -> dict:
        return {
            **dict.fromkeys(("steps", "soft_label_bytes_sent", "soft_label_bytes_received", "query_bytes_sent", "query_bytes_received", "train_triples", "train_sequences"), 0),
            **dict.fromkeys(("loss", "kd_loss", "train_seconds"), 0.0),
        }


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    kind: str  # state, started, round, restarted, evaluated, evaluating, ranking, finished, failed, stopped
    state: str
    round: int
    total_rounds: int
    progress: dict
    round_seconds: float = 0.0
    message: str = ""


def work_text(statuses: dict[str, dict | None], idle: str) -> str:
    """Each KB's work under way (:meth:`KBWorker.work_progress`) in words, ``idle`` for a KB with none, e.g.
    "a ranking test 128/661 triples, ETA 41 min; b done" or "text training 12/65 steps, ETA 9 min; struct teaching text, 4 min"."""
    parts = []
    for kb, status in statuses.items():
        if status is None:
            parts.append(f"{kb} {idle}")
        elif not status["total"]:  # not counted: how long it has run
            parts.append(f"{kb} {status['work']}, {format_seconds(status['seconds'])}")
        else:
            done, total = status["done"], status["total"]
            counted = done - status["taken_up"]  # in this sitting: the pace the rest goes at
            eta = f"ETA {format_seconds(status['seconds'] / counted * (total - done))}" if counted > 0 else "ETA ?"
            parts.append(f"{kb} {status['work']} {done:,}/{total:,} {status['unit']}, {eta}")
    return "; ".join(parts)


def format_seconds(seconds: float) -> str:
    """``seconds`` as a person reads a wait: "40 s", "12 min", "2 h 05 min"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class JobRunner(threading.Thread):
    """Runs a job's rounds as its strategy plans them (push: teach; pull: ask -> answer; then train), evaluates and checkpoints.

    One job's failure fails that job only: every error ends here, in the job's record.
    """

    def __init__(self, job: Job, workers: dict, views: dict[str, AlignmentView], store, on_change, resume: bool, revive) -> None:
        super().__init__(name=f"job-{job.job_id}", daemon=True)
        self.job = job
        self.workers = workers
        self.views = views
        self.store = store
        self.on_change = on_change
        self.resume = resume
        self.revive = revive  # KB names -> (their workers' handles, the names of those restarted): Coordinator.revive_dead
        self.stop_requested = threading.Event()
        self.interrupted = threading.Event()  # coordinator shutting down: leave the job resumable
        self._subscribers: list[queue.Queue] = []
        self._lock = threading.Lock()

    # -- events ----------------------------------------------------------------------------
    def subscribe(self, channel: queue.Queue | None = None) -> queue.Queue:
        """A channel that receives every later event (``channel``: one a watcher opened before the job started)."""
        channel = channel if channel is not None else queue.Queue()
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
            strategy = make_strategy(job.strategy, job.kbs, settings, job.strategy_settings)
            initial = strategy.state()
            self._configure(settings, strategy, initial)
            job.state = "RUNNING"
            self._emit("started")
            restarts = 0
            while job.round < settings.rounds:
                round_ = job.round
                if self.interrupted.is_set():
                    return
                if self.stop_requested.is_set():
                    if job.round > job.checkpoint_round:
                        self._checkpoint(settings, strategy)  # StartJob resumes it where it stopped
                    job.state = "STOPPED"
                    self._emit("stopped", message="stopped on request")
                    return
                try:
                    self._advance(round_, settings, strategy)
                except WORKER_ENDED:
                    if self.interrupted.is_set():
                        return  # the shutdown ended the workers of the round in flight: the job stays RUNNING, resumable
                    restarts += 1
                    self._restart_workers(round_, restarts, settings, strategy, initial)
            if job.round > job.checkpoint_round:
                self._checkpoint(settings, strategy)  # every job leaves its final weights
            self._emit("evaluating", message="ranking the test split of every KB")
            job.test_metrics = self._evaluate("test")
            job.state = "SUCCEEDED"
            self._emit("finished")
        except Exception as error:  # noqa: BLE001 - the job fails, the coordinator lives on
            if self.interrupted.is_set() and isinstance(unwrap(error), WORKER_ENDED):
                return  # as above, outside a round (a checkpoint, the evaluation)
            cause = unwrap(error)
            log.exception("job %s failed", job.job_id)
            job.state = "FAILED"
            job.error = f"{type(cause).__name__}: {cause}"
            if isinstance(cause, WORKER_ENDED):  # outside a round: said plainly, without Ray's internals
                job.error = "UnavailableError: a KB worker of this job ended (killed or out of memory); StartJob resumes the job from its last checkpoint"
            self._emit("failed", message=job.error)

    def _advance(self, round_: int, settings: JobSettings, strategy) -> None:
        """Round ``round_`` and what follows it: the strategy's observation, evaluation and checkpoint as the settings ask."""
        job = self.job
        seconds, results = self._round(round_, strategy.plan(round_), settings)
        strategy.observe(results)
        job.round = round_ + 1
        metrics.ROUND_SECONDS.labels(job.job_id).observe(seconds)
        metrics.JOB_ROUNDS.labels(job.job_id).set(job.round)
        if settings.eval_every and job.round % settings.eval_every == 0 and job.round < settings.rounds:
            self._evaluate("valid")
        if settings.checkpoint_every and job.round % settings.checkpoint_every == 0:
            self._checkpoint(settings, strategy)
        self._emit("round", round_seconds=seconds)

    def _restart_workers(self, round_: int, restarts: int, settings: JobSettings, strategy, initial: dict) -> None:
        """A worker died in round ``round_``: restart it and go on from the last checkpoint; the job fails, in plain words, after MAX_RESTARTS."""
        if restarts > MAX_RESTARTS:
            raise UnavailableError(f"KB workers of this job ended {restarts} times in this run, last in round {round_ + 1}; StartJob resumes the job from its last checkpoint")
        try:
            self.workers, restarted = self.revive(list(self.workers))
        except UnavailableError as error:
            raise UnavailableError(f"round {round_ + 1}: {error}; StartJob resumes the job from its last checkpoint") from None
        names = ", ".join(map(repr, restarted)) or "?"
        log.warning("job %s: the worker of KB %s ended in round %d; restarted, resuming from the last checkpoint", self.job.job_id, names, round_ + 1)
        self.resume = True
        self._configure(settings, strategy, initial)
        self._emit("restarted", message=f"the worker of KB {names} ended in round {round_ + 1}; restarted, resuming at round {self.job.round}")

    def _configure(self, settings: JobSettings, strategy, initial: dict) -> None:
        """Fresh models from the job's seed (and the strategy in its ``initial`` state), or, resuming, the newest checkpoint every KB can load
        (older ones when the latest is damaged; the job fails, its checkpoints untouched, when none loads)."""
        job = self.job
        distill = settings.distill()

        def configure() -> None:
            ray.get([w.configure.remote(job.job_id, settings.seed, distill, self.views[kb], strategy.teachers_of(kb)) for kb, w in self.workers.items()])

        configure()
        refused = []
        for round_ in sorted(map(int, job.checkpoints), reverse=True) if self.resume else ():
            try:
                ray.get([w.load.remote(str(self.store.checkpoint_dir(job.job_id, kb)), round_) for kb, w in self.workers.items()])
            except ray.exceptions.RayError as error:
                cause = unwrap(error)
                if not isinstance(cause, DataError):
                    raise
                log.error("job %s: checkpoint of round %d unusable, trying an older one: %s", job.job_id, round_, cause)
                refused.append(f"round {round_}: {cause}")
                continue
            saved = job.checkpoints[str(round_)]
            job.round, job.progress = round_, copy.deepcopy(saved["progress"])
            strategy.restore(saved["strategy"])
            break
        else:
            if refused:  # training from round 0 would overwrite them: their owner decides
                raise DataError(f"no checkpoint of this job can be loaded, none was changed ({'; '.join(refused)})")
            job.round = 0
            if self.resume:
                job.progress = {}
                strategy.restore(initial)
        for kb in self.workers:
            job.progress.setdefault(kb, job.new_progress())

    def _round(self, round_: int, plan: RoundPlan, settings: JobSettings) -> tuple[float, RoundResults]:
        """One round: soft labels (and, for pull, queries) move as Ray object references; workers never call each other.

        A teacher's labels for a student are a list of references, one per message of at most the
        server's ``max_label_bytes`` (the teacher puts them; the student fetches them).

        Calls reach each worker in the order they are made here, so a teacher labels before it
        trains in the same round, as in Algorithm 1.
        """
        started = time.perf_counter()
        steps = settings.steps_per_round
        training = set(plan.training)
        edges = [e for e in plan.edges if e.student in training and e.student != e.teacher and e.student in self.views[e.teacher].peers]
        inbound: dict[str, list] = {kb: [] for kb in plan.training}
        weights: dict[str, dict[str, float]] = {kb: {} for kb in plan.training}
        pushed, pulled = {}, []
        for teacher in dict.fromkeys(e.teacher for e in edges if e.mode == "push"):
            students = [e.student for e in edges if e.mode == "push" and e.teacher == teacher]
            refs = self.workers[teacher].teach.options(num_returns=1 + len(students)).remote(round_, steps, students)
            pushed[teacher] = refs[0]
            for student, ref in zip(students, refs[1:]):
                inbound[student].append(ref)
        # Every ask before any answer: Ray sends one caller's calls to an actor in order, and an answer
        # waits for its student's ask; an answer sent ahead of its own KB's ask would hold that ask
        # (and every poll of work_progress behind it) until the answer is done.
        pull_edges = [e for e in edges if e.mode == "pull"]
        asks = [self.workers[edge.student].ask.options(num_returns=2).remote(round_, steps, edge.teacher, edge.candidates) for edge in pull_edges]
        for edge, (asked, queries) in zip(pull_edges, asks):
            answered, labels = self.workers[edge.teacher].answer.options(num_returns=2).remote(queries)
            pulled.append((edge, asked, answered))
            inbound[edge.student].append(labels)
        for edge in edges:
            weights[edge.student][edge.teacher] = edge.weight
        # every teacher's labels are made before any KB trains: one that cannot send them (max_label_bytes) fails the round with no model changed
        where = f"round {round_ + 1}/{settings.rounds}: "
        taught = self._reporting(list(pushed.values()), "working", where, "waiting")
        pull_stats = self._reporting([ref for _, asked, answered in pulled for ref in (asked, answered)], "working", where, "waiting")
        train = {kb: self.workers[kb].train.remote(round_, steps, *inbound[kb], weights=weights[kb]) for kb in plan.training}
        trained = dict(zip(train, self._reporting(list(train.values()), "working", where, "waiting")))
        routed: dict[tuple[str, str], tuple[int, int]] = {}  # (teacher, student) -> (bytes, messages)
        for teacher, stats in zip(pushed, taught):
            for student, size in stats["bytes"].items():
                routed[teacher, student] = size, stats["messages"][student]
        for i, (edge, _, _) in enumerate(pulled):
            ask_stats, answer_stats = pull_stats[2 * i : 2 * i + 2]
            routed[edge.teacher, edge.student] = answer_stats["bytes"], answer_stats["messages"]
            self._meter_queries(edge.student, edge.teacher, ask_stats["bytes"])
        for (teacher, student), (size, messages) in routed.items():
            metrics.ROUTED_BYTES.labels(teacher, student, self.job.job_id).inc(size)
            metrics.ROUTED_MESSAGES.labels(teacher, student, self.job.job_id).inc(messages)
            self.job.progress[teacher]["soft_label_bytes_sent"] += size
            self.job.progress[student]["soft_label_bytes_received"] += size
        for kb, result in trained.items():
            progress = self.job.progress[kb]
            progress.update(loss=result["loss"], kd_loss=result["kd_loss"], steps=result["steps"])
            for total, part in (("train_triples", "triples"), ("train_sequences", "sequences"), ("train_seconds", "seconds")):
                progress[total] = progress.get(total, 0) + result[part]
            for subset, count in result.get("teacher_subsets", {}).items():  # queries per subset of teachers its combination chose (DSoM's Fig. 3)
                chosen = progress.setdefault("teacher_subsets", {})
                chosen[subset] = chosen.get(subset, 0) + count
        return time.perf_counter() - started, RoundResults(round_, trained, {pair: size for pair, (size, _) in routed.items()})

    def _meter_queries(self, student: str, teacher: str, size: int) -> None:
        metrics.ROUTED_QUERY_BYTES.labels(student, teacher, self.job.job_id).inc(size)
        self.job.progress[student]["query_bytes_sent"] += size
        self.job.progress[teacher]["query_bytes_received"] += size

    def _evaluate(self, split: str) -> dict:
        """Every KB's metrics on ``split``; the test split's also per degree bucket of the target. With a state folder, a ranking
        the job's interruption cut short goes on where it stopped (a cross-encoder's exact ranking takes an hour on UMLS)."""
        folders = {kb: self.store.checkpoint_dir(self.job.job_id, kb) for kb in self.workers}  # None without a state folder
        evaluations = [w.evaluate.remote(split, by_degree=split == "test", directory=folders[kb]) for kb, w in self.workers.items()]
        results = dict(zip(self.workers, self._reporting(evaluations, "ranking", "", "done")))
        if split == "valid":
            for kb, result in results.items():
                self.job.progress[kb]["valid"] = result
            self._emit("evaluated")
        return results

    def _reporting(self, refs: list, kind: str, prefix: str, idle: str) -> list:
        """``ray.get(refs)``; while they run, a ``kind`` event every WORK_POLL_SECONDS saying each KB's work under way
        (a cross-encoder's round or ranking can take an hour)."""
        pending = refs
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=WORK_POLL_SECONDS)
            statuses = dict(zip(self.workers, ray.get([w.work_progress.remote() for w in self.workers.values()]))) if pending else {}
            if any(statuses.values()):
                self._emit(kind, message=prefix + work_text(statuses, idle))
        return ray.get(refs)

    def _checkpoint(self, settings: JobSettings, strategy) -> None:
        """Every worker's checkpoint of this round, and the job's side of it (progress, strategy state); the last ``keep_checkpoints`` are kept."""
        job = self.job
        if not self.store.root:
            return
        keep = settings.keep_checkpoints
        ray.get([w.save.remote(str(self.store.checkpoint_dir(job.job_id, kb)), job.round, keep) for kb, w in self.workers.items()])
        job.checkpoints[str(job.round)] = {"progress": copy.deepcopy(job.progress), "strategy": strategy.state()}
        job.checkpoints = {round_: job.checkpoints[round_] for round_ in sorted(job.checkpoints, key=int)[-keep:]}
        job.checkpoint_round = job.round
