"""The coordinator's operations as plain methods; the gRPC servicer is a thin layer over them."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray

from kdmkb.coordinator.alignment import PairAlignment, build_pair, merge
from kdmkb.coordinator.jobs import STATES, TERMINAL, Job, JobEvent, JobRunner
from kdmkb.coordinator.store import Store
from kdmkb.coordinator.strategies import make_strategy
from kdmkb.kb_worker.actor import spawn_worker
from kdmkb.kb_worker.worker_types import WORKER_TYPES
from kdmkb.services import metrics
from kdmkb.services.config import KB_NAME_PATTERN, JobSettings, validate
from kdmkb.services.data_roots import DataRoots
from kdmkb.services.errors import ConfigError, DataError, KdmkbError, LimitError, NotFoundError, PreconditionError, UnavailableError
from kdmkb.services.limits import Limits
from kdmkb.services.ray_runtime import ensure_ray, unwrap

log = logging.getLogger(__name__)

SPLITS = ("valid", "test")
HEALTH_SECONDS = 5.0  # a worker that does not answer its health check in this time counts as unhealthy
SHUTDOWN_WAIT_SECONDS = 60.0  # how long a shutdown waits for each job's round in flight before ending its workers


@dataclass
class _KB:
    spec: dict
    handle: object
    info: dict
    vocabulary: dict | None = None


def _require(value, field: str) -> None:
    if value in ("", None) or (isinstance(value, list | tuple) and not value):
        raise ConfigError(f"{field}: must not be empty")


class Coordinator:
    """Registers KBs and alignments, runs jobs, and serves evaluation, prediction and export."""

    def __init__(
        self, data_dir: str | Path | None = None, ray_address: str | None = None, data_roots: DataRoots | None = None, limits: Limits | None = None
    ) -> None:
        ensure_ray(ray_address)
        self.limits = limits or Limits()
        self.data_roots = data_roots or DataRoots(None)
        self.store = Store(data_dir)
        self._lock = threading.RLock()
        self._kbs: dict[str, _KB] = {}
        self._alignments: dict[tuple[str, str], PairAlignment] = {}
        self._jobs: dict[str, Job] = {}
        self._runners: dict[str, JobRunner] = {}
        self._waiting: dict[str, list[queue.Queue]] = {}  # channels of watchers of jobs not started yet
        self._restore()

    # -- persistence -----------------------------------------------------------------------
    def _restore(self) -> None:
        """Re-opens registered KBs, alignments and jobs; jobs that were running resume from their last checkpoint."""
        for spec in self.store.load_kbs().values():
            try:
                self.register_kb(**spec)
            except KdmkbError as error:
                log.error("cannot re-open KB %r: %s", spec["name"], error)
        for spec in self.store.load_alignments():
            try:
                self.register_alignment(**spec)
            except KdmkbError as error:
                log.error("cannot restore alignment %s <-> %s: %s", spec["kb_a"], spec["kb_b"], error)
        for job in self.store.load_jobs(Job.from_dict):
            self._jobs[job.job_id] = job
            if job.state == "RUNNING":
                try:
                    self._launch(job, resume=True)
                except KdmkbError as error:
                    job.state, job.error = "FAILED", f"cannot resume after restart: {error}"
                    self.store.save_job(job.to_dict())
        for name in list(self._kbs):
            if not self._busy(name):  # a resumed job restores its own KBs
                self._restore_model(name)
        self._export_job_states()
        self.store.save_scrape_targets(self.scrape_targets())  # also when no KB could be re-opened

    def _restore_model(self, name: str) -> None:
        """Gives a KB whose worker started outside a job the model its newest job left: that job's newest usable checkpoint.

        Without it, a KB would answer Predict with "no model yet" after a coordinator restart or a
        restarted worker, although its trained model is on disk.
        """
        with self._lock:
            kb = self._kbs[name]
            jobs = [job for job in self._jobs.values() if name in job.kbs and job.checkpoints and job.kb_specs.get(name, kb.spec) == kb.spec]
        if not jobs:
            return
        job = max(jobs, key=lambda job: job.updated_at)
        settings = JobSettings.model_validate(job.settings)
        rounds = sorted(map(int, job.checkpoints), reverse=True)
        try:
            teachers = make_strategy(job.strategy, job.kbs, settings, job.strategy_settings).teachers_of(name)  # a dsom student's policy is theirs
            directory = str(self.store.checkpoint_dir(job.job_id, name))
            restored = self._call(kb.handle.restore_model.remote(job.job_id, settings.seed, settings.distill(), directory, rounds, teachers), name)
        except KdmkbError as error:  # the worker ended meanwhile: it serves nothing until restarted
            log.error("KB %r: cannot restore the model of job %s: %s", name, job.job_id, error)
            return
        for round_, reason in restored["unusable"]:
            log.error("KB %r: checkpoint of round %d of job %s unusable, trying an older one: %s", name, round_, job.job_id, reason)
        if restored["round"] is None:
            log.error("KB %r: no checkpoint of job %s is usable; it has no model until its next job", name, job.job_id)
        else:
            log.info("KB %r: model restored from round %d of job %s", name, restored["round"], job.job_id)

    def _persist_kbs(self) -> None:
        self.store.save_kbs({name: kb.spec for name, kb in self._kbs.items()})
        self.store.save_scrape_targets(self.scrape_targets())

    def _persist_alignments(self) -> None:
        self.store.save_alignments(
            [{"kb_a": a.kb_a, "kb_b": a.kb_b, "entities_path": a.entities_path, "relations_path": a.relations_path} for a in self._alignments.values()]
        )

    def _export_job_states(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                for state in STATES:
                    metrics.JOB_STATE.labels(job.job_id, state).set(float(job.state == state))

    # -- KBs -------------------------------------------------------------------------------
    def register_kb(self, name: str, data_dir: str, worker_type: str = "transe", settings: dict | None = None, resource: str = "", force: bool = False) -> dict:
        """Registers a KB, or re-registers it with other settings: refused while it has alignments or unfinished jobs unless ``force``
        (its alignments are then rebuilt against its new vocabulary, and those jobs refuse to run)."""
        _require(name, "name")
        if not KB_NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"name: {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        _require(data_dir, "data_dir")
        worker_type = worker_type or "transe"
        try:
            worker_class = WORKER_TYPES.get(worker_type)
        except ConfigError as error:
            raise ConfigError(f"worker_type: {error}") from None
        typed = validate(worker_class.settings_model, settings or {}, prefix="settings")
        self.limits.check_settings(typed.model_dump())
        spec = {"name": name, "data_dir": str(self.data_roots.resolve(data_dir, "data_dir")), "worker_type": worker_type, "settings": typed.model_dump(exclude_unset=True), "resource": resource}
        with self._lock:
            existing = self._kbs.get(name)
            if existing and existing.spec == spec:
                if self.revive_dead([name])[1] and not self._busy(name):
                    self._restore_model(name)
                return self._describe_kb(name)
            if existing and self._busy(name):
                raise PreconditionError(f"KB {name!r} is in running job {self._busy(name)!r}; stop it before re-registering")
            if not existing and len(self._kbs) >= self.limits.max_kbs:
                raise LimitError(f"name: {len(self._kbs)} KBs are registered, the server's limit max_kbs; cannot register {name!r}")
            if existing and not force and self._dependents(name):
                raise PreconditionError(
                    f"KB {name!r} has {self._dependents(name)}; re-registering it with other settings needs force "
                    "(its alignments are then rebuilt and those jobs refuse to run)"
                )
        if resource and resource not in ray.cluster_resources():
            raise PreconditionError(f"resource: no node of the Ray cluster offers {resource!r}; start one with --resources='{{\"{resource}\": 1}}'")
        handle, info = self._open_worker(spec)
        vocabulary, rebuilt = None, {}
        if existing:
            try:
                vocabulary = self._call(handle.vocabulary.remote(), name)
                rebuilt = self._rebuilt_alignments(name, vocabulary)
            except BaseException:
                ray.kill(handle)
                raise
        with self._lock:
            if existing:
                ray.kill(existing.handle)
                self._alignments.update(rebuilt)
                self._persist_alignments()
            self._kbs[name] = _KB(spec, handle, info, vocabulary)
            self._persist_kbs()
        return self._describe_kb(name)

    def _dependents(self, name: str) -> str:
        """What a re-registration of ``name`` would change under: its alignments and its unfinished jobs, in words ("" if none)."""
        with self._lock:
            peers = sorted(b if a == name else a for a, b in self._alignments if name in (a, b))
            jobs = sorted(job.job_id for job in self._jobs.values() if name in job.kbs and job.state != "SUCCEEDED")
        parts = ([f"alignments with {', '.join(map(repr, peers))}"] if peers else []) + ([f"unfinished jobs {', '.join(jobs)}"] if jobs else [])
        return " and ".join(parts)

    def _rebuilt_alignments(self, name: str, vocabulary: dict) -> dict:
        """``name``'s alignments read again against its new ``vocabulary``; a file that no longer fits raises, naming it."""
        rebuilt = {}
        for key, pair in list(self._alignments.items()):
            if name in key:
                vocab_a = vocabulary if pair.kb_a == name else self._vocabulary(pair.kb_a, "kb_a")
                vocab_b = vocabulary if pair.kb_b == name else self._vocabulary(pair.kb_b, "kb_b")
                rebuilt[key] = build_pair(pair.kb_a, pair.kb_b, vocab_a, vocab_b, pair.entities_path, pair.relations_path)
        return rebuilt

    def _open_worker(self, spec: dict) -> tuple[object, dict]:
        """A new actor for the KB of ``spec`` with its data loaded and its /metrics served; on failure no actor is left."""
        worker_class = WORKER_TYPES.get(spec["worker_type"])
        typed = worker_class.settings_model.model_validate(spec["settings"])
        options = worker_class.actor_options(typed, ray.cluster_resources().get("GPU", 0.0))
        handle = spawn_worker(spec["name"], spec["data_dir"], spec["worker_type"], typed, spec["resource"], options, self.limits)
        try:
            info = self._call(handle.open.remote(self.data_roots.names()), spec["name"])
            endpoint = self._call(handle.start_metrics.remote(), spec["name"])
            info["metrics_address"] = f"{endpoint['host']}:{endpoint['port']}"
        except DataError as error:  # the folder's problem, named as the request field it came from
            ray.kill(handle)
            raise DataError(f"data_dir: {error}") from None
        except BaseException:
            ray.kill(handle)
            raise
        return handle, info

    def health(self, names: list[str]) -> dict[str, str]:
        """Each KB's health: "" when its worker answers within HEALTH_SECONDS (it answers also while it trains), else why not."""
        with self._lock:
            pings = {name: self._kbs[name].handle.alive.remote() for name in names if name in self._kbs}
        ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=HEALTH_SECONDS)
        health = {}
        for name, ref in pings.items():
            try:
                health[name] = "" if ref in ready and ray.get(ref) else f"its worker did not answer within {HEALTH_SECONDS:g} s"
            except ray.exceptions.RayError:
                health[name] = "its worker process has ended (killed or out of memory)"
        return health

    def revive_dead(self, names: list[str]) -> tuple[dict[str, object], list[str]]:
        """Restarts the workers of ``names`` that have died (the data loaded again; a job restores its checkpoint); returns every one's handle and the names restarted.

        Raises :class:`UnavailableError` naming the KB when a worker cannot be restarted.
        """
        restarted = []
        for name, problem in self.health(names).items():
            if not problem:
                continue
            log.warning("KB %r: %s; restarting it", name, problem)
            spec = self._kb(name).spec
            try:
                handle, info = self._open_worker(spec)
            except KdmkbError as error:
                raise UnavailableError(f"KB {name!r}: {problem}, and it cannot be restarted: {error}") from None
            with self._lock:
                self._kbs[name] = _KB(spec, handle, info, self._kbs[name].vocabulary)
                self.store.save_scrape_targets(self.scrape_targets())
            restarted.append(name)
        with self._lock:
            return {name: self._kbs[name].handle for name in names}, restarted

    def _kb(self, name: str, field: str = "kb") -> _KB:
        _require(name, field)
        with self._lock:
            if name not in self._kbs:
                raise NotFoundError(f"{field}: no KB named {name!r} is registered")
            return self._kbs[name]

    def _busy(self, name: str) -> str:
        for job_id, runner in self._runners.items():
            if runner.is_alive() and name in runner.job.kbs:
                return job_id
        return ""

    def _describe_kb(self, name: str, problem: str | None = None) -> dict:
        kb = self._kbs[name]
        described = {k: v for k, v in kb.info.items() if k.startswith("num_") or k == "metrics_address"}
        problem = self.health([name])[name] if problem is None else problem
        return {**kb.spec, **described, "busy_with_job": self._busy(name), "healthy": not problem, "unhealthy_reason": problem}

    def list_kbs(self) -> list[dict]:
        health = self.health(list(self._kbs))
        with self._lock:
            return [self._describe_kb(name, health.get(name, "")) for name in sorted(self._kbs)]

    def _vocabulary(self, name: str, field: str) -> dict:
        kb = self._kb(name, field)
        if kb.vocabulary is None:
            kb.vocabulary = self._call(kb.handle.vocabulary.remote(), name)
        return kb.vocabulary

    # -- alignments ------------------------------------------------------------------------
    def register_alignment(self, kb_a: str, kb_b: str, entities_path: str = "", relations_path: str = "") -> dict:
        vocab_a, vocab_b = self._vocabulary(kb_a, "kb_a"), self._vocabulary(kb_b, "kb_b")
        if kb_a == kb_b:
            raise ConfigError(f"kb_b: an alignment needs two different KBs; got {kb_a!r} twice")
        paths = {}
        for path, field in ((entities_path, "entities_path"), (relations_path, "relations_path")):
            paths[field] = str(self.data_roots.resolve(path, field)) if path else ""
            if path and not Path(paths[field]).is_file():
                raise ConfigError(f"{field}: file {path!r} not found")
        pair = build_pair(kb_a, kb_b, vocab_a, vocab_b, paths["entities_path"], paths["relations_path"])
        with self._lock:
            self._alignments[tuple(sorted((kb_a, kb_b)))] = pair
            self._persist_alignments()
        return self._describe_alignment(pair)

    @staticmethod
    def _describe_alignment(pair: PairAlignment) -> dict:
        return {
            "kb_a": pair.kb_a,
            "kb_b": pair.kb_b,
            "entities_path": pair.entities_path,
            "relations_path": pair.relations_path,
            "num_entity_pairs": len(pair.entities),
            "num_relation_pairs": len(pair.relations),
        }

    # -- jobs ------------------------------------------------------------------------------
    def create_job(
        self, strategy: str, kbs: list[str], settings: dict | None = None, strategy_settings: dict | None = None, resume_unfinished: bool = False
    ) -> Job:
        """A new job (CREATED); with ``resume_unfinished``, the same job's unfinished record where one exists."""
        _require(strategy, "strategy")
        _require(list(kbs), "kbs")
        if len(set(kbs)) != len(kbs):
            raise ConfigError(f"kbs: a KB is listed twice ({', '.join(kbs)})")
        for index, name in enumerate(kbs):
            self._kb(name, f"kbs[{index}]")
        typed = validate(JobSettings, settings or {}, prefix="settings")
        planner = make_strategy(strategy, list(kbs), typed, strategy_settings)  # validates the strategy's own settings now
        merge(list(kbs), self._job_alignments(kbs))  # conflicting alignments fail now, not later
        job = Job(
            strategy=strategy,
            kbs=list(kbs),
            settings=typed.model_dump(),
            strategy_settings=planner.settings.model_dump(exclude_unset=True),
            kb_specs={name: self._kbs[name].spec for name in kbs},
        )
        with self._lock:
            if resume_unfinished:
                same = [kept for kept in self._jobs.values() if kept.state != "SUCCEEDED" and kept.identity() == job.identity()]
                if same:
                    return max(same, key=lambda kept: kept.created_at)
            self._jobs[job.job_id] = job
        self.store.save_job(job.to_dict())
        self._export_job_states()
        return job

    def _job_alignments(self, kbs: list[str]) -> list[PairAlignment]:
        return [pair for (a, b), pair in self._alignments.items() if a in kbs and b in kbs]

    def job(self, job_id: str) -> Job:
        _require(job_id, "job_id")
        with self._lock:
            if job_id not in self._jobs:
                raise NotFoundError(f"job_id: no job {job_id!r}")
            return self._jobs[job_id]

    def list_jobs(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: job.created_at)

    def start_job(self, job_id: str) -> Job:
        job = self.job(job_id)
        with self._lock:
            if job.state == "RUNNING" or job_id in self._runners and self._runners[job_id].is_alive():
                return job  # idempotent
            if job.state == "SUCCEEDED":
                raise PreconditionError(f"job_id: job {job_id!r} has SUCCEEDED; create a new job to run again")
            for name in job.kbs:
                self._kb(name, "kbs")
                if self._busy(name):
                    raise PreconditionError(f"KB {name!r} is busy in job {self._busy(name)!r}")
            self.revive_dead(job.kbs)
            self._launch(job, resume=job.state in ("FAILED", "STOPPED"))  # from its last checkpoint
        return job

    def _launch(self, job: Job, resume: bool) -> None:
        for name in job.kbs:
            if job.kb_specs and job.kb_specs.get(name) != self._kb(name, "kbs").spec:
                raise PreconditionError(f"job_id: KB {name!r} was registered again with other settings after job {job.job_id!r} was created; create a new job")
        workers = {name: self._kb(name, "kbs").handle for name in job.kbs}
        views = merge(job.kbs, self._job_alignments(job.kbs))
        runner = JobRunner(job, workers, views, self.store, self._export_job_states, resume, self.revive_dead)
        for channel in self._waiting.pop(job.job_id, []):
            runner.subscribe(channel)
        # the runner is findable before the job reads RUNNING: a watcher polling in between would
        # otherwise take a RUNNING job without a runner for one stopped before it started
        self._runners[job.job_id] = runner
        job.state, job.error = "RUNNING", ""
        runner.start()

    def stop_job(self, job_id: str) -> Job:
        job = self.job(job_id)
        runner = self._runners.get(job_id)
        if runner is not None and runner.is_alive():
            runner.stop_requested.set()
            runner.join()
        elif job.state == "CREATED":
            job.state = "STOPPED"
            self.store.save_job(job.to_dict())
            self._export_job_states()
        return job

    def watch_job(self, job_id: str, is_active=lambda: True, poll_seconds: float = 0.5) -> Iterator[JobEvent]:
        """Yields the job's current state, then every event until the job ends or the client leaves.

        A job not started yet is watched from its start on: a client that watches before it calls
        StartJob sees every round, however quickly the first ones run.
        """
        job = self.job(job_id)
        with self._lock:
            runner = self._runners.get(job_id)
            channel = runner.subscribe() if runner else queue.Queue()
            if runner is None:
                self._waiting.setdefault(job_id, []).append(channel)
        try:
            state = job.state
            yield JobEvent(job.job_id, "state", state, job.round, job.total_rounds, {k: dict(v) for k, v in job.progress.items()}, message=job.error)
            # Subscribed before that snapshot: every later event, the terminal one included, is in
            # the channel. Checking job.state here instead would end the stream between the state
            # change and its event, without the terminal event.
            while state not in TERMINAL and is_active():
                try:
                    event = channel.get(timeout=poll_seconds)
                except queue.Empty:
                    runner = self._runners.get(job_id)
                    if runner is None and job.state != "CREATED":
                        return  # stopped before it started
                    if runner is not None and not runner.is_alive() and channel.empty():
                        return  # interrupted by a shutdown: no terminal event will come
                    continue
                yield event
                if event.state in TERMINAL:
                    return
        finally:
            with self._lock:
                if channel in self._waiting.get(job_id, []):
                    self._waiting[job_id].remove(channel)
                runner = self._runners.get(job_id)
            if runner is not None:
                runner.unsubscribe(channel)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        runner = self._runners.get(job_id)
        if runner is not None:
            runner.join(timeout)
        return self.job(job_id)

    # -- serving ---------------------------------------------------------------------------
    def evaluate(self, kb: str, split: str = "test") -> dict:
        if split not in SPLITS:
            raise ConfigError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
        return self._call(self._kb(kb).handle.evaluate.remote(split), kb)

    def predict(self, kb: str, head: str, relation: str, k: int = 10, tail: str = "") -> list[dict]:
        """Top-k tails of (head, relation, ?), or given ``tail`` instead of ``head`` top-k heads of (?, relation, tail)."""
        if head and tail:
            raise ConfigError("tail: give a head (to predict tails) or a tail (to predict heads), not both")
        if not tail:
            _require(head, "head")
        _require(relation, "relation")
        if not 0 < k <= 1000:
            raise ConfigError(f"k: must be between 1 and 1000, got {k}")
        return self._call(self._kb(kb).handle.predict.remote(head, relation, k, tail=tail), kb)

    def export(self, kb: str) -> dict:
        return self._call(self._kb(kb).handle.export.remote(), kb)

    def placement(self, kb: str) -> dict:
        return self._call(self._kb(kb).handle.placement.remote(), kb)

    def scrape_targets(self) -> list[dict]:
        """Every worker's /metrics address in Prometheus file_sd form (also written to the data dir)."""
        with self._lock:
            return [{"targets": [kb.info["metrics_address"]], "labels": {"kb": name}} for name, kb in sorted(self._kbs.items())]

    @staticmethod
    def _call(ref, kb: str):
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError:
            raise UnavailableError(f"KB {kb!r} is unavailable: its worker process has ended (killed or out of memory); StartJob or an identical RegisterKB restarts it") from None
        except ray.exceptions.RayError as error:
            raise unwrap(error) from None

    def interrupt_jobs(self) -> None:
        """Running jobs start no further round: they stay RUNNING in the store, so the next coordinator resumes them.

        Called before the server's grace period too, so a job does not run on to its end while the server stops.
        """
        for runner in list(self._runners.values()):
            runner.interrupted.set()

    def shutdown(self) -> None:
        """Interrupts running jobs (:meth:`interrupt_jobs`), waits for their rounds in flight (``SHUTDOWN_WAIT_SECONDS``) and ends the workers.

        A round still in flight then is lost, not its job: it stays RUNNING and resumes from its last checkpoint.
        """
        self.interrupt_jobs()
        for runner in list(self._runners.values()):
            runner.join(timeout=SHUTDOWN_WAIT_SECONDS)
        with self._lock:
            for kb in self._kbs.values():
                ray.kill(kb.handle)
            self._kbs.clear()
