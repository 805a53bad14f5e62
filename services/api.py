"""The Python API: cut a dataset into KBs, run a job, and keep (or reopen) everything the run produced.

``run`` returns a :class:`Result` that holds what it needs once the KBs' workers are gone: the
test metrics, the per-round history from the job's event stream, each KB's embeddings and its
final checkpoint (from which :meth:`Result.predict` rebuilds the model in this process).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import tomli_w
from tqdm.auto import tqdm

from kdmkb.services.client import CoordinatorClient, embedded_coordinator, job_report, state_name
from kdmkb.services.config import JobFile, job_file_from_dict, load_job_file
from kdmkb.services.errors import ConfigError, JobFailedError, KdmkbError, PreconditionError
from kdmkb.services.history import HistoryRecorder, Round, read_jsonl, write_csv, write_jsonl
from kdmkb.services.outputs import PLOTS, Embeddings, figure
from kdmkb.services.split import SplitSummary, check_out_dir, job_file_dict, split_dataset, write_job_file

__all__ = ["JobDetached", "Prediction", "Result", "Split", "load", "run", "split"]

JOB_FILE, REPORT_FILE, HISTORY_JSONL, HISTORY_CSV = "job.toml", "report.json", "history.jsonl", "history.csv"
CHECKPOINTS, EMBEDDINGS, BASELINE = "checkpoints", "embeddings", "baseline"
BASELINE_STRATEGY = "none"


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A predicted entity, its score, and whether the triple is already known to the KB."""

    entity: str
    score: float
    known: bool


class JobDetached(KeyboardInterrupt):
    """Ctrl-C while following a job on a running coordinator: the job goes on there (stop it with StopJob)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} keeps running on the coordinator")
        self.job_id = job_id


class Split:
    """KBs cut from one dataset by :func:`split`: run them (:meth:`job`, :func:`run`) or keep them (:meth:`save`)."""

    def __init__(self, summary: SplitSummary, temporary: tempfile.TemporaryDirectory | None = None) -> None:
        self.summary = summary
        self._temporary = temporary  # the KB folders live as long as this object when no ``out`` was given

    @property
    def out_dir(self) -> Path:
        return self.summary.out_dir

    @property
    def kb_names(self) -> tuple[str, ...]:
        return self.summary.kb_names

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {count}" for name, count in self.summary.train_counts.items())
        return f"Split({self.out_dir}, train triples {counts})"

    def job(
        self,
        *,
        strategy: str = "cooperative",
        worker_type: str = "transe",
        worker_settings: dict | None = None,
        strategy_settings: dict | None = None,
        **settings: Any,
    ) -> JobFile:
        """A job over every KB of the split and its alignments; ``settings`` are the ``[job]`` settings (rounds, alpha, ...)."""
        raw = job_file_dict(self.summary, strategy=strategy, worker_type=worker_type, worker_settings=worker_settings, job=settings, relative=False)
        return job_file_from_dict({**raw, "strategy_settings": dict(strategy_settings or {})})

    def save(self, directory: str | Path) -> Path:
        """Writes the split (KB folders, alignments, ``split.json``) and a ``job.toml`` that runs it into ``directory``; returns the job file."""
        directory = Path(directory)
        summary = self.summary
        if directory.resolve() != self.out_dir.resolve():
            check_out_dir(directory)
            shutil.copytree(self.out_dir, directory, dirs_exist_ok=True)
            summary = dataclasses.replace(summary, out_dir=directory)
        return write_job_file(summary)


def split(dataset_dir: str | Path, kbs: int = 3, seed: int = 0, align: str = "co-occurring", out: str | Path | None = None, names: Sequence[str] | None = None) -> Split:
    """Cuts a dataset's train triples into ``kbs`` aligned KBs as KD-MKB does (``kdmkb split``).

    ``out`` is the folder to write (absent or empty); without it the KBs live in a temporary folder
    for as long as the returned :class:`Split` does. ``align`` is "co-occurring", "all", a fraction
    of the co-occurring entities, or "co-occurring+F" (docs/data.md).
    """
    temporary = tempfile.TemporaryDirectory(prefix="kdmkb-split-") if out is None else None
    target = Path(temporary.name) / "kbs" if temporary else Path(out).resolve()
    summary = split_dataset(Path(dataset_dir), target, kbs=kbs, seed=seed, align=align, names=list(names) if names is not None else None)
    return Split(summary, temporary)


class Result:
    """A finished job: test metrics, per-round history, embeddings and final checkpoints of its KBs.

    Reopen a saved one with :func:`load`. ``baseline`` is the result of the same KBs trained
    alone, when :func:`run` was asked for one.
    """

    def __init__(
        self,
        job: JobFile,
        report: dict,
        history: list[Round],
        embeddings: dict[str, Embeddings],
        checkpoints: dict[str, Path],
        baseline: Result | None = None,
        *,
        remote: str | CoordinatorClient | None = None,
        keep: Sequence[object] = (),
    ) -> None:
        self.job = job
        self.report = report
        self.history = history
        self.checkpoints = checkpoints
        self.baseline = baseline
        self._embeddings = embeddings
        self._remote = remote  # where to predict for KBs without a local checkpoint
        self._keep = tuple(keep)  # temporary folders (checkpoints, KB data) this result still reads
        self._workers: dict = {}

    # -- reading -----------------------------------------------------------------------------
    @property
    def kbs(self) -> list[str]:
        return [entry.name for entry in self.job.kb]

    @property
    def strategy(self) -> str:
        return self.report["strategy"]

    def __repr__(self) -> str:
        metrics = ", ".join(f"{kb} MRR {values['mrr']:.4f}" for kb, values in self.report["kbs"].items())
        return f"Result(job {self.report['job_id']!r}, {self.strategy}, {self.report['rounds']} rounds; {metrics})"

    @property
    def metrics_records(self) -> list[dict]:
        """One record per KB: kb, strategy and its filtered test metrics (mrr, mr, hits@1, hits@3, hits@10)."""
        return [{"kb": kb, "strategy": self.strategy, **values} for kb, values in self.report["kbs"].items()]

    @property
    def history_records(self) -> list[dict]:
        """One flat record per round and KB (the columns of ``history.csv``)."""
        return [row for record in self.history for row in record.rows()]

    @property
    def metrics_frame(self):
        """:attr:`metrics_records` as a pandas DataFrame (pandas is not a dependency of kdmkb)."""
        return _frame(self.metrics_records)

    @property
    def history_frame(self):
        """:attr:`history_records` as a pandas DataFrame."""
        return _frame(self.history_records)

    def embeddings(self, kb: str) -> Embeddings:
        """The KB's entity and relation vectors with their names, as the job left them."""
        self._entry(kb)
        if kb not in self._embeddings:
            raise PreconditionError(f"kb: KB {kb!r} is of worker type {self._entry(kb).worker_type!r}, which has no embeddings to export")
        return self._embeddings[kb]

    def predict(self, kb: str, head: str | None, relation: str, k: int = 10, *, tail: str | None = None) -> list[Prediction]:
        """The top-``k`` tails of ``(head, relation, ?)``, or with ``head=None`` and ``tail`` the top-``k`` heads of ``(?, relation, tail)``.

        The model is rebuilt in this process from the KB's final checkpoint (the KB's data folder
        must still be there). A result of a remote coordinator has no local checkpoints; it asks
        that coordinator, with the KB's current weights.
        """
        if not 0 < k <= 1000:
            raise ConfigError(f"k: must be between 1 and 1000, got {k}")
        self._entry(kb)
        if kb not in self.checkpoints and self._remote is not None:
            return self._remote_predict(kb, head or "", relation, k, tail or "")
        answers = self._worker(kb).predict(head or "", relation, k, tail=tail or "")
        return [Prediction(**answer) for answer in answers]

    def plot(self, plots: Sequence[str] = tuple(PLOTS)):
        """A matplotlib figure of the training loss and the validation MRR per KB over the rounds (the baseline's dashed)."""
        unknown = [name for name in plots if name not in PLOTS]
        if unknown:
            raise ConfigError(f"plots: unknown {', '.join(map(repr, unknown))}; known: {', '.join(PLOTS)}")
        baseline = self.baseline
        return figure(plots, self.history, self.strategy, baseline.history if baseline else (), baseline.strategy if baseline else "")

    # -- keeping -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Writes the run into ``directory`` (absent or empty): the job file as run with every default, ``report.json``,
        ``history.jsonl`` and ``history.csv``, a PNG per plot, each KB's final checkpoint and embeddings; the baseline's
        run in ``baseline/``."""
        directory = Path(directory)
        check_out_dir(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / JOB_FILE).write_text(tomli_w.dumps(self.job.filled()), encoding="utf-8")
        report = {**self.report, **({"baseline": self.baseline.report} if self.baseline else {})}
        (directory / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        write_jsonl(directory / HISTORY_JSONL, self.history)
        write_csv(directory / HISTORY_CSV, self.history)
        for name in PLOTS:
            self.plot([name]).savefig(directory / f"{name}.png", dpi=100)
        for kb, path in self.checkpoints.items():
            (directory / CHECKPOINTS / kb).mkdir(parents=True)
            shutil.copyfile(path, directory / CHECKPOINTS / kb / path.name)
        if self._embeddings:
            (directory / EMBEDDINGS).mkdir()
        for kb, vectors in self._embeddings.items():
            vectors.save(directory / EMBEDDINGS / f"{kb}.npz")
        if self.baseline:
            self.baseline.save(directory / BASELINE)
        return directory

    # -- internals ---------------------------------------------------------------------------
    def _entry(self, kb: str):
        for entry in self.job.kb:
            if entry.name == kb:
                return entry
        raise ConfigError(f"kb: no KB {kb!r} in this result; its KBs: {', '.join(self.kbs)}")

    def _worker(self, kb: str):
        """The KB's worker in this process, from its final checkpoint (built once)."""
        if kb in self._workers:
            return self._workers[kb]
        if kb not in self.checkpoints:
            raise PreconditionError(f"kb: this result has no checkpoint of KB {kb!r} to predict with")
        import torch

        from kdmkb.coordinator.strategies import make_strategy
        from kdmkb.kb_worker import checkpoints
        from kdmkb.kb_worker.worker import KBWorker
        from kdmkb.kb_worker.worker_types import WORKER_TYPES

        entry = self._entry(kb)
        # On this process's CPU with its threads; a checkpoint fits any runtime settings.
        settings = WORKER_TYPES.get(entry.worker_type).validate_settings({**entry.settings, "device": "cpu", "threads": torch.get_num_threads()})
        generators = checkpoints.random_state()  # loading restores the job's generators; this process keeps its own
        try:
            worker = KBWorker(kb, entry.data, entry.worker_type, settings)
            teachers = make_strategy(self.job.strategy, self.kbs, self.job.job, self.job.strategy_settings).teachers_of(kb)  # a dsom student's policy is theirs
            worker.configure(self.report["job_id"], self.job.job.seed, self.job.job.distill(), teachers=teachers)
            worker.load(self.checkpoints[kb].parent, self.report["rounds"])
        except KdmkbError as error:
            raise PreconditionError(f"kb: cannot rebuild KB {kb!r} from its data folder {entry.data} and checkpoint {self.checkpoints[kb]}: {error}") from None
        finally:
            checkpoints.set_random_state(generators)
        self._workers[kb] = worker
        return worker

    def _remote_predict(self, kb: str, head: str, relation: str, k: int, tail: str) -> list[Prediction]:
        from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb

        client = self._remote if isinstance(self._remote, CoordinatorClient) else CoordinatorClient(self._remote)
        try:
            response = client.stub.Predict(pb.PredictRequest(kb=kb, head=head, relation=relation, k=k, tail=tail), timeout=client.timeout)
        finally:
            if client is not self._remote:
                client.close()
        return [Prediction(p.entity, p.score, p.known) for p in response.predictions]


def _frame(records: list[dict]):
    try:
        import pandas
    except ImportError:
        raise ImportError("a DataFrame needs pandas (pip install pandas); the records are there without it") from None
    return pandas.DataFrame.from_records(records)


def _job_file(job: str | Path | dict | JobFile | Split) -> JobFile:
    if isinstance(job, JobFile):
        return job
    if isinstance(job, Split):
        return job.job()
    if isinstance(job, dict):
        return job_file_from_dict(job)
    if isinstance(job, str | Path):
        if Path(job).is_dir():
            raise ConfigError(f"job: {job} is a folder; give its job file (such as {Path(job) / JOB_FILE})")
        return load_job_file(job)
    raise ConfigError(f"job: expected a job file path, a dict, a JobFile or a Split, got {type(job).__name__}")


def run(
    job: str | Path | dict | JobFile | Split,
    *,
    coordinator: str | CoordinatorClient | None = None,
    strategy: str | None = None,
    baseline: bool = False,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> Result:
    """Runs a job and returns its :class:`Result`.

    ``job`` is a TOML job file, its content as a dict (paths relative to the working directory),
    a :class:`~kdmkb.services.config.JobFile` or a :class:`Split` (its default job). The job runs on
    an embedded coordinator (a local Ray), or on the running one at ``coordinator`` ("host:port",
    or a :class:`~kdmkb.services.client.CoordinatorClient` carrying a token or TLS settings).
    ``strategy`` overrides the job's; ``baseline`` first trains the same KBs alone (strategy
    "none") for comparison. ``data_dir`` keeps the embedded coordinator's state there, so that the
    same call resumes an unfinished job (its history then starts where it resumed). ``out`` saves
    the result there (:meth:`Result.save`); it is checked before the job starts.
    """
    job_file = _job_file(job)
    if strategy is not None:  # refused here, not once a coordinator and its workers have started
        from kdmkb.coordinator.strategies import validate_strategy_settings

        validate_strategy_settings(strategy, {})
    if out is not None:
        check_out_dir(Path(out))
    if coordinator is not None:
        if data_dir is not None:
            raise ConfigError("data_dir: a running coordinator keeps its own data (kdmkb serve --data-dir); give one or the other")
        client = coordinator if isinstance(coordinator, CoordinatorClient) else CoordinatorClient(coordinator)
        try:
            result = _run_all(client, job_file, strategy, baseline, None, False, progress, remote=coordinator)
        finally:
            if client is not coordinator:
                client.close()
    else:
        with tempfile.TemporaryDirectory(prefix="kdmkb-run-") as scratch:
            state = Path(data_dir) if data_dir is not None else Path(scratch)
            # The embedded coordinator reads exactly the job file's KB folders and alignment files.
            roots = [kb.data for kb in job_file.kb] + [path.parent for a in job_file.alignment for path in (a.entities, a.relations) if path]
            with embedded_coordinator(str(state), data_roots=roots) as client:
                result = _run_all(client, job_file, strategy, baseline, state, data_dir is not None, progress)
    if isinstance(job, Split):
        result._keep += (job,)
    if out is not None:
        result.save(out)
    return result


def _run_all(client, job_file, strategy, baseline, state, resume, progress, remote=None) -> Result:
    """The job on ``client``'s coordinator, after its baseline when one is asked for."""
    alone = _run_one(client, job_file, BASELINE_STRATEGY, state, resume, progress, remote) if baseline else None
    return _run_one(client, job_file, strategy, state, resume, progress, remote, alone)


def _run_one(client: CoordinatorClient, job_file: JobFile, strategy: str | None, state: Path | None, resume: bool, progress: bool, remote, baseline=None) -> Result:
    """One job on ``client``'s coordinator; collects what the result needs before that coordinator goes away."""
    if strategy not in (None, job_file.strategy):
        job_file = job_file.model_copy(update={"strategy": strategy, "strategy_settings": {}})
    job = client.submit(job_file, None, resume)
    recorder = HistoryRecorder()
    bar = RoundsBar(job_file.strategy, job.total_rounds, job.round, progress)
    if job.round and progress:
        tqdm.write(f"resuming job {job.job_id} ({state_name(job.state)}, round {job.round}/{job.total_rounds}) from its last checkpoint", file=sys.stderr)

    def on_event(event) -> None:
        recorder.observe(event)
        bar.observe(event)

    try:
        job = client.run(job.job_id, on_event)
    except KeyboardInterrupt:
        if remote is None:
            raise
        raise JobDetached(job.job_id) from None
    finally:
        bar.close()
    if state_name(job.state) != "SUCCEEDED":
        raise JobFailedError(f"job {job.job_id} {state_name(job.state)}: {job.error}")
    report = job_report(job)
    embeddings = {entry.name: vectors for entry in job_file.kb if (vectors := _fetch_embeddings(client, entry)) is not None}
    kept = tempfile.TemporaryDirectory(prefix="kdmkb-result-") if state is not None else None
    checkpoints = _copy_checkpoints(state, job.job_id, job.round, job_file, Path(kept.name)) if kept else {}
    return Result(job_file, report, recorder.rounds, embeddings, checkpoints, baseline, remote=remote, keep=[kept] if kept else [])


class RoundsBar:
    """A job's progress bar: rounds done (its rate and ETA per round), each KB's loss and training rate, and what a long round or ranking is doing."""

    def __init__(self, strategy: str, total: int, initial: int, enabled: bool = True, file=None) -> None:
        self.strategy = strategy
        self.bar = tqdm(total=total, initial=initial, desc=strategy, unit="round", dynamic_ncols=True, disable=not enabled, file=file)

    def observe(self, event) -> None:
        if event.progress:
            self.bar.set_postfix({kb: progress_text(p) for kb, p in sorted(event.progress.items())}, refresh=False)
        if event.round > self.bar.n:  # rounds only: an update of 0 would count in tqdm's rate as an iteration that did nothing
            self.bar.update(event.round - self.bar.n)
        if event.kind == "evaluating":
            self.bar.set_description(f"{self.strategy} (evaluating)")
        elif event.kind in ("working", "ranking"):  # how far a long round or ranking is, and its ETA
            self.bar.set_description(f"{self.strategy} ({event.message})")
        elif event.kind == "round":
            self.bar.set_description(self.strategy)

    def close(self) -> None:
        self.bar.close()


def progress_text(progress) -> str:
    """A KB's loss (and KD loss) and its training rate: sequences/s for text encoders, triples/s otherwise."""
    text = f"{progress.loss:.3f}" + (f"/kd {progress.kd_loss:.3f}" if progress.kd_loss else "")
    if progress.train_seconds > 0:
        count, unit = (progress.train_sequences, "seq") if progress.train_sequences else (progress.train_triples, "triples")
        text += f" {count / progress.train_seconds:,.1f} {unit}/s"
    return text


def subsets_text(progress) -> str:
    """A student's chosen teacher subsets as shares of its queries, largest first (DSoM's Fig. 3); "" for a KB that chose none."""
    counts = progress.teacher_subsets
    total = sum(counts.values())
    if not total:
        return ""
    return "teachers " + ", ".join(f"{subset} {count / total:.0%}" for subset, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _fetch_embeddings(client: CoordinatorClient, entry) -> Embeddings | None:
    from kdmkb.kb_worker.worker_types import WORKER_TYPES

    try:
        parts = client.embeddings(entry.name)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:  # a worker type without embeddings
            return None
        raise
    (entity_names, entity_vectors), (relation_names, relation_vectors) = parts["entity"], parts["relation"]
    layout = dict(WORKER_TYPES.get(entry.worker_type).embedding_layout)
    return Embeddings(entry.name, entry.worker_type, layout, list(entity_names), entity_vectors, list(relation_names), relation_vectors)


def _copy_checkpoints(state: Path, job_id: str, round_: int, job_file: JobFile, into: Path) -> dict[str, Path]:
    """Each KB's checkpoint of the job's last round, copied out of the coordinator's data folder."""
    from kdmkb.coordinator.store import Store
    from kdmkb.kb_worker import checkpoints

    store, copied = Store(state), {}
    for entry in job_file.kb:
        source = checkpoints.path(store.checkpoint_dir(job_id, entry.name), round_)
        target = checkpoints.path(into / entry.name, round_)
        target.parent.mkdir(parents=True)
        shutil.copyfile(source, target)
        copied[entry.name] = target
    return copied


def load(directory: str | Path) -> Result:
    """Reopens a result saved by :meth:`Result.save` (or ``kdmkb run --out``): metrics, history, embeddings, checkpoints."""
    directory = Path(directory).resolve()
    if not (directory / REPORT_FILE).is_file():
        raise ConfigError(f"directory: {directory} holds no saved run ({REPORT_FILE} not found)")
    try:
        report = json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))
    except ValueError as error:
        raise ConfigError(f"{directory / REPORT_FILE}: not valid JSON ({error})") from None
    report.pop(BASELINE, None)
    job_file = load_job_file(directory / JOB_FILE)
    embeddings = {path.stem: Embeddings.load(path) for path in sorted((directory / EMBEDDINGS).glob("*.npz"))}
    checkpoints = {folder.name: file for folder in sorted((directory / CHECKPOINTS).glob("*")) for file in sorted(folder.glob("*.pt"))[-1:]}
    baseline = load(directory / BASELINE) if (directory / BASELINE).is_dir() else None
    return Result(job_file, report, read_jsonl(directory / HISTORY_JSONL), embeddings, checkpoints, baseline)
