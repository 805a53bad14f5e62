"""One KB's worker: the facade the coordinator calls, over the teacher side, the student side and checkpoints.

Plain Python so that it can be tested without Ray; :mod:`kdmkb.kb_worker.actor` makes it a Ray actor.
Its calls take the round they belong to, so that none depends on another having run first:
teaching (push), asking (pull) and training of one round read the same batches.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kdmkb.kb_worker import checkpoints
from kdmkb.kb_worker.alignment_view import AlignmentView, LocalAlignment
from kdmkb.kb_worker.combining import StudentContext, make_combination
from kdmkb.kb_worker.data import KnowledgeBase, ShuffledPasses, load_kb
from kdmkb.kb_worker.ranking import KnownAnswers, PartialRanking, RankingMetrics, evaluate_ranking
from kdmkb.kb_worker.student import Student
from kdmkb.kb_worker.teacher import Side, Teacher
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind, WorkerSettings, WorkerType
from kdmkb.kb_worker.worker_types.base import Ranking
from kdmkb.services import metrics
from kdmkb.services.config import DistillSettings
from kdmkb.services.errors import ConfigError, DataError, NotFoundError, PreconditionError
from kdmkb.services.limits import Limits


class BatchSchedule:
    """Batches of an epoch-wise shuffled pass over the KB's own training triples, drawn once per round.

    KD-MKB labels the teacher's own batches, so a round's teaching and training share them;
    training ends the round.
    """

    def __init__(self, num_triples: int, batch_size: int) -> None:
        self.passes = ShuffledPasses(num_triples, batch_size)
        self.batch_size = self.passes.batch_size
        self.reset()

    def reset(self) -> None:
        self.passes.restart()
        self._round: int | None = None
        self._batches: list[torch.Tensor] = []

    def batches(self, round_: int, steps: int) -> list[torch.Tensor]:
        """Row ids of round ``round_``'s ``steps`` batches: drawn at the round's first call, the same until it ends."""
        if self._round != round_:
            self._round, self._batches = round_, [self.passes.next() for _ in range(steps)]
        elif len(self._batches) != steps:
            raise PreconditionError(f"round {round_} was drawn with {len(self._batches)} steps, not {steps}")
        return self._batches

    def end_round(self) -> None:
        self._round, self._batches = None, []

    def state(self) -> dict:
        """Where the pass stands between rounds, for a checkpoint."""
        return self.passes.state()

    def restore(self, state: dict) -> None:
        self.reset()
        self.passes.restore(state)


class KBWorker:
    """Owns one KB's triples, model, optimiser and faiss index; only soft labels and queries over aligned ids leave it."""

    ranking_save_seconds = 30.0  # how often a ranking given a folder saves its progress there
    _work: dict | None = None  # the work under way (see work_progress), set here and read from another thread

    def __init__(self, name: str, data_dir: str | Path, worker_type: str, settings: WorkerSettings | dict | None = None, limits: Limits | None = None) -> None:
        self.name = name
        self.worker_type = worker_type
        self.type_class = WORKER_TYPES.get(worker_type)
        self.settings = settings if type(settings) is self.type_class.settings_model else self.type_class.validate_settings(settings or {})
        self.type_class.prepare_process(self.settings)
        self.kb: KnowledgeBase = load_kb(data_dir, limits)
        self.max_label_bytes = (limits or Limits()).max_label_bytes
        self.type_class.check_kb(self.kb, self.settings)
        self.known = KnownAnswers(self.kb.known_triples(), len(self.kb.entities), len(self.kb.relations))
        self._train = torch.from_numpy(self.kb.train)
        self.schedule = BatchSchedule(len(self._train), self.settings.batch_size)
        self.job_id = ""
        self.distill = DistillSettings()
        self.model: WorkerType | None = None
        self.teacher: Teacher | None = None
        self.student: Student | None = None
        self.step = 0
        self.alignment = LocalAlignment(name, self.kb, AlignmentView())
        self.teachers: tuple[str, ...] = ()

    # -- description -----------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "name": self.name,
            "worker_type": self.worker_type,
            "num_entities": len(self.kb.entities),
            "num_relations": len(self.kb.relations),
            "num_train": len(self.kb.train),
            "num_valid": len(self.kb.valid),
            "num_test": len(self.kb.test),
            "pid": os.getpid(),
        }

    def vocabulary(self) -> dict[str, list[str]]:
        """Entity and relation names (never triples): what alignments are written in."""
        return {"entity": list(self.kb.entities.names), "relation": list(self.kb.relations.names)}

    # -- job set-up ------------------------------------------------------------------------
    def _sides(self, model: WorkerType) -> tuple[WorkerType, Teacher, Student]:
        """Both sides around ``model`` (the student side creates the optimiser)."""
        distill = self.distill
        context = StudentContext(self.kb, self.teachers, model.device)
        combination = make_combination(
            distill.combination, distill.combination_settings, temperature=distill.temperature, relation_weight=distill.relation_weight, context=context
        )
        side = Side(self.name, self.job_id, model, self.alignment, distill)
        return model, Teacher(side, self._train, self.settings.batch_size, self.max_label_bytes), Student(side, combination)

    def configure(
        self, job_id: str, seed: int, distill: DistillSettings | dict | None = None, alignment: AlignmentView | None = None, teachers: list[str] | tuple[str, ...] | None = None
    ) -> dict:
        """Starts a job: a fresh model and optimiser from ``seed``, the job's distillation settings.

        ``teachers``: the KBs this one may learn from in the job (its strategy says; default: every
        aligned peer), the ones its teacher combination is built for: with none, a learned
        combination (a dsom policy) has nothing to learn and is not built.
        """
        self.job_id = job_id
        self.distill = distill if isinstance(distill, DistillSettings) else DistillSettings.model_validate(distill or {})
        if alignment is not None:
            self.alignment = LocalAlignment(self.name, self.kb, alignment)
        self.teachers = tuple(sorted(self.alignment.peers if teachers is None else teachers))
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(self.name.encode()))
        self.model, self.teacher, self.student = self._sides(self.type_class(self.kb, self.settings))
        self.step = 0
        self.schedule.reset()
        return {"parameters": self.model.num_parameters()}

    def _require_model(self) -> WorkerType:
        if self.model is None:
            raise PreconditionError(f"KB {self.name!r} has no model yet: run a job first")
        return self.model

    @contextlib.contextmanager
    def _evaluating(self):
        """The model in eval mode for the block's duration (deterministic scores: batch-norm, dropout)."""
        model = self._require_model()
        model.modules().eval()
        try:
            yield model
        finally:
            model.modules().train()

    def _serving(self):
        """The model that answers Predict; the actor answers from a snapshot instead, so that Predict never waits for a round."""
        return self._evaluating()

    def _post(self, message: bytes):
        """A message as it leaves this worker: the bytes themselves; the actor puts each into Ray's object store."""
        return message

    def _fetch(self, posted) -> bytes:
        """A message :meth:`_post` made, as bytes."""
        return posted

    def _send(self, peer: str, messages: list[bytes]) -> list:
        """The ``SoftLabels`` messages for ``peer``, metered and posted."""
        labels = (self.name, peer, self.job_id)
        metrics.WORKER_SENT_BYTES.labels(*labels).inc(sum(map(len, messages)))
        metrics.WORKER_SENT_MESSAGES.labels(*labels).inc(len(messages))
        return [self._post(message) for message in messages]

    # -- work under way ----------------------------------------------------------------------
    def work_progress(self) -> dict | None:
        """The work under way (None: none): ``work`` in words, ``done`` of ``total`` ``unit`` (total 0: not counted),
        ``taken_up`` (done by an earlier sitting) and the ``seconds`` it has run; read while a round or a ranking runs."""
        work = self._work
        return None if work is None else {**{k: v for k, v in work.items() if k != "started"}, "seconds": time.monotonic() - work["started"]}

    @contextlib.contextmanager
    def _working(self, work: str, total: int = 0, unit: str = "", taken_up: int = 0):
        """:meth:`work_progress` says ``work`` for the block's duration; the block counts what it has done with the callback it is given
        (``taken_up`` of it, done in an earlier sitting, first)."""
        self._work = {"work": work, "total": total, "unit": unit, "done": 0, "taken_up": taken_up, "started": time.monotonic()}

        def progress(count: int) -> None:
            work = self._work  # a new dict each time: a reader never sees half of one
            self._work = {**work, "done": work["done"] + count}

        try:
            yield progress
        finally:
            self._work = None

    # -- teaching --------------------------------------------------------------------------
    def teach(self, round_: int, steps: int, students: list[str]) -> tuple:
        """Push: ``(stats, messages_for_student_1, ...)``, each a list of ``SoftLabels`` messages over the
        queries of this round's batches whose given parts are aligned with that student (several when
        they exceed ``max_label_bytes``)."""
        started = time.perf_counter()
        with self._working(f"teaching {', '.join(students)}"), self._evaluating(), torch.no_grad():
            messages = self.teacher.push(round_, self.schedule.batches(round_, steps), students, self.step)
        stats = {
            "bytes": {s: sum(map(len, m)) for s, m in zip(students, messages)},
            "messages": {s: len(m) for s, m in zip(students, messages)},
            "seconds": time.perf_counter() - started,
        }
        return (stats, *(self._send(s, m) for s, m in zip(students, messages)))

    def answer(self, queries: bytes) -> tuple:
        """Pull: ``(stats, messages)``, the ``SoftLabels`` messages over a student's ``Queries``."""
        started = time.perf_counter()
        with self._working("answering"), self._evaluating(), torch.no_grad():
            student, messages = self.teacher.answer(queries)
        stats = {"bytes": sum(map(len, messages)), "messages": len(messages), "student": student, "seconds": time.perf_counter() - started}
        return stats, self._send(student, messages)

    # -- learning --------------------------------------------------------------------------
    def ask(self, round_: int, steps: int, teacher: str, rule: str = "top-k") -> tuple:
        """Pull: ``(stats, payload)``, a ``Queries`` message for ``teacher`` over this round's batches."""
        with self._working(f"asking {teacher}"), self._evaluating(), torch.no_grad():  # the listed rule searches the student's own model
            payload = self.student.ask(round_, self.schedule.batches(round_, steps), self._train, teacher, rule)
        metrics.WORKER_QUERY_SENT_BYTES.labels(self.name, teacher, self.job_id).inc(len(payload))
        return {"bytes": len(payload)}, payload

    def train(self, round_: int, steps: int, *inbound: list, weights: dict[str, float] | None = None) -> dict:
        """``steps`` updates on this round's batches, each ``(1-alpha) L_own + alpha L_KD`` when it has soft labels.

        Each of ``inbound`` is one teacher's messages (what its :meth:`teach` or :meth:`answer`
        posted), fetched one at a time and all read before the first update: a bad one changes
        nothing. ``weights`` gives each teacher's weight in the round's plan (default 1).
        """
        self._require_model()
        lessons, received = self.student.lessons((self._fetch(posted) for messages in inbound for posted in messages), weights or {})
        for teacher, size in received:
            metrics.WORKER_RECEIVED_BYTES.labels(self.name, teacher, self.job_id).inc(size)
            metrics.WORKER_RECEIVED_MESSAGES.labels(self.name, teacher, self.job_id).inc()
        batches = [self._train[rows] for rows in self.schedule.batches(round_, steps)]
        self.schedule.end_round()
        sequences_before = self.model.trained_sequences
        with self._working("training", len(batches), "steps") as progress:
            result = self.student.train(batches, lessons, progress)
        self.step += len(batches)
        labels = (self.name, self.job_id)
        metrics.WORKER_LOSS.labels(*labels).set(result["loss"])  # before the check: a NaN loss is what the alert looks for
        if result["kd_steps"]:
            metrics.WORKER_KD_LOSS.labels(*labels).set(result["kd_loss"])
        if not np.isfinite(result["loss"]) or not np.isfinite(result["kd_loss"]):
            raise FloatingPointError(f"KB {self.name!r}: loss became {result['loss']} (KD {result['kd_loss']}) at step {self.step}; lower the learning rate")
        seconds, triples = result["seconds"], sum(len(b) for b in batches)
        metrics.WORKER_STEPS.labels(*labels).inc(len(batches))
        metrics.WORKER_TRIPLES.labels(*labels).inc(triples)
        metrics.WORKER_STEPS_RATE.labels(*labels).set(len(batches) / seconds if seconds > 0 else 0.0)
        metrics.WORKER_TRIPLES_RATE.labels(*labels).set(triples / seconds if seconds > 0 else 0.0)
        for subset, count in result.get("teacher_subsets", {}).items():
            metrics.WORKER_TEACHER_SUBSETS.labels(*labels, subset).inc(count)
        sequences = self.model.trained_sequences - sequences_before
        return {
            "loss": result["loss"],
            "kd_loss": result["kd_loss"],
            "steps": self.step,
            "seconds": seconds,
            "triples": triples,
            "sequences": sequences,
            "teacher_subsets": result.get("teacher_subsets", {}),
        }

    # -- evaluation and serving ------------------------------------------------------------
    def evaluate(self, split: str = "test", by_degree: bool = False, directory: str | Path | None = None) -> dict:
        """Filtered ranking metrics of ``split``; ``by_degree`` adds them per bucket of the target's train degree.

        With ``directory`` (the job's checkpoint folder) an interrupted ranking goes on where it
        stopped: its progress is saved there every ``ranking_save_seconds`` and taken up only by
        a ranking of the same weights, split and settings.
        """
        triples = self.kb.split(split)
        degrees = np.bincount(self.kb.train[:, [0, 2]].ravel(), minlength=len(self.kb.entities)) if by_degree else None
        with self._evaluating() as model:

            def score(kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
                return model.score(kind, queries.to(model.device), None if candidates is None else candidates.to(model.device))

            ranking = model.ranking()
            done, on_batch = self._saved_ranking(model, ranking, split, len(triples), directory) if directory is not None else (None, None)
            with self._working(f"ranking {split}", len(triples), "triples", taken_up=done.triples if done else 0) as progress:
                result: RankingMetrics = evaluate_ranking(
                    score, triples, self.known, batch_size=self.settings.eval_batch_size, progress=progress,
                    ranking=ranking, degrees=degrees, done=done, on_batch=on_batch,
                )
            if directory is not None:
                checkpoints.ranking_path(directory, split).unlink(missing_ok=True)
        metrics.WORKER_MRR.labels(self.name, self.job_id, split).set(result.mrr)
        metrics.WORKER_HITS10.labels(self.name, self.job_id, split).set(result.hits_at_10)
        return result.as_dict()

    def _saved_ranking(self, model: WorkerType, ranking: Ranking, split: str, count: int, directory: str | Path) -> tuple[PartialRanking | None, Callable]:
        """This very ranking's progress saved in ``directory`` (None: none), and the callback that saves it every ``ranking_save_seconds``.

        The weights' digest is taken only when a saved file is there or the first save is due:
        a job's short valid rankings need neither.
        """
        key = {"kb": self.name, "split": split, "triples": count, "batch_size": self.settings.eval_batch_size, "ranking": ranking.label}

        def full_key() -> dict:
            if "weights" not in key:
                key["weights"] = checkpoints.weights_fingerprint(model.modules())
            return key

        saved = time.monotonic()

        def on_batch(part: PartialRanking) -> None:
            nonlocal saved
            if time.monotonic() - saved >= self.ranking_save_seconds:
                checkpoints.write_ranking(directory, split, full_key(), part)
                saved = time.monotonic()

        return checkpoints.read_ranking(directory, split, full_key), on_batch

    def predict(self, head: str, relation: str, k: int = 10, tail: str = "") -> list[dict]:
        """Top-k tails for (head, relation), or given ``tail`` instead of ``head`` top-k heads for (relation, tail),
        among all entities, best first."""
        if bool(head) == bool(tail):
            raise ConfigError("head, tail: give a head (to predict tails) or a tail (to predict heads), not both")
        given = head or tail
        for name, vocabulary, what in ((given, self.kb.entities, "entity"), (relation, self.kb.relations, "relation")):
            if name not in vocabulary.index:
                raise NotFoundError(f"{what} {name!r} is not in KB {self.name!r}")
        entity, relation_id = self.kb.entities.index[given], self.kb.relations.index[relation]
        kind = QueryKind.TAIL if head else QueryKind.HEAD
        query = torch.tensor([[entity, relation_id] if head else [relation_id, entity]])
        everything = torch.arange(len(self.kb.entities))
        with self._serving() as model, torch.no_grad():
            top = model.top_candidates(kind, query, everything, k)
            scores = model.score_sliced(kind, query, top)[0]
        known = set(self.known.pairs(kind, query)[1].tolist())
        return [{"entity": self.kb.entities.names[e], "score": float(s), "known": e in known} for e, s in zip(top[0].tolist(), scores.tolist())]

    def export(self) -> dict:
        """Embeddings with their names (entity rows in vocabulary order), for worker types that have them."""
        model = self._require_model()
        if type(model).embeddings is WorkerType.embeddings:
            raise PreconditionError(f"KB {self.name!r} is of worker type {self.worker_type!r}, which has no embeddings to export")
        vectors = model.embeddings()
        return {
            "entity": (list(self.kb.entities.names), vectors["entity"]),
            "relation": (list(self.kb.relations.names), vectors["relation"]),
        }

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, directory: str | Path, round_: int, keep: int = 1) -> str:
        """Writes round ``round_``'s checkpoint (model, optimiser, learned combination, step, batch order, the teacher's
        candidate cache and every random generator) atomically, keeping the last ``keep``."""
        model = self._require_model()
        learned = self.student.combination.modules()
        state = {
            "kb": self.name,
            "worker_type": self.worker_type,
            "settings": self.settings.model_dump(),
            "model": model.modules().state_dict(),
            "optimizer": self.student.optimizer.state_dict(),
            "combination": learned.state_dict() if learned is not None else {},
            "step": self.step,
            "updates": model.updates,
            "training_state": model.training_state(),
            "schedule": self.schedule.state(),
            "teacher": self.teacher.state(),
            "random": checkpoints.random_state(),
        }
        return checkpoints.write(directory, round_, state, keep)

    def load(self, directory: str | Path, round_: int) -> int:
        """Restores round ``round_``'s checkpoint written by :meth:`save`; a bad one raises and changes nothing."""
        self._require_model()  # only into a configured job: the checkpoint restores weights, not job settings
        state = checkpoints.read(directory, round_, self.name, self.worker_type, self.settings)
        model, teacher, student = self._sides(self.type_class(self.kb, self.settings))
        learned = student.combination.modules()
        try:
            model.modules().load_state_dict(state["model"])
            if learned is not None:
                learned.load_state_dict(state.get("combination") or {})
            rates = [group["lr"] for group in student.optimizer.param_groups]
            student.optimizer.load_state_dict(state["optimizer"])
            for group, rate in zip(student.optimizer.param_groups, rates, strict=True):
                group["lr"] = rate  # the settings' step size now (a checkpoint keeps the sums, not the rate it was written at)
            teacher.restore(state["teacher"])
            model.load_training_state(state["training_state"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise DataError(f"{checkpoints.path(directory, round_)}: checkpoint does not fit KB {self.name!r} ({error})") from None
        self.model, self.teacher, self.student = model, teacher, student
        model.updates = int(state["updates"])
        self.step = int(state["step"])
        self.schedule.restore(state["schedule"])
        checkpoints.set_random_state(state["random"])
        return self.step

    def restore_model(
        self, job_id: str, seed: int, distill: DistillSettings, directory: str | Path, rounds: list[int], teachers: list[str] | tuple[str, ...] | None = None
    ) -> dict:
        """The model a job left, outside any job: the newest usable checkpoint of ``rounds`` (newest first).

        ``teachers`` as :meth:`configure` takes them (a dsom student's checkpoint holds a policy over its teachers).
        Returns the round restored (None: no model, as before any job) and why each newer one was unusable.
        """
        unusable = []
        self.configure(job_id, seed, distill, teachers=teachers)  # once: a checkpoint that fails to load changes nothing
        for round_ in rounds:
            try:
                self.load(directory, round_)
            except DataError as error:
                unusable.append((round_, str(error)))
                continue
            return {"round": round_, "unusable": unusable}
        self.model = self.teacher = self.student = None
        return {"round": None, "unusable": unusable}
