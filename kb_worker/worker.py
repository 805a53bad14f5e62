"""One KB's worker: its own training, teaching and learning from soft labels, evaluation, checkpoints.

Plain Python so that it can be tested without Ray; :mod:`kb_worker.actor` makes it a Ray actor.
Everything about the exchange is written here once, on top of the worker-type contract.
"""

from __future__ import annotations

import io
import os
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdmkb.kb_worker import soft_labels
from kdmkb.kb_worker.data import KnowledgeBase, load_kb
from kdmkb.kb_worker.losses import distillation_kl
from kdmkb.kb_worker.ranking import KnownAnswers, RankingMetrics, evaluate_ranking
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind, WorkerType
from kdmkb.services import metrics
from kdmkb.services.config import DistillSettings
from kdmkb.services.errors import DataError, NotFoundError, PreconditionError

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class AlignmentView:
    """What one worker knows of the alignment: its own names' alignment ids, and what it shares with each peer."""

    entities: dict[str, int] = field(default_factory=dict)
    relations: dict[str, int] = field(default_factory=dict)
    # peer -> (entity alignment ids shared with it, relation alignment ids shared with it)
    peers: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class _KDBatch:
    """Soft labels of one kind for one step, merged across teachers, in local ids."""

    kind: QueryKind
    queries: torch.Tensor
    candidates: torch.Tensor
    teacher_scores: torch.Tensor
    weights: torch.Tensor


@dataclass
class _PeerPools:
    """Local ids this KB shares with one peer, as masks (to select queries) and pools (candidates)."""

    entity_mask: torch.Tensor
    relation_mask: torch.Tensor
    entity_pool: torch.Tensor
    relation_pool: torch.Tensor
    signature: int  # equal for peers that share exactly the same ids, so their lessons are computed once


# Settings of how a worker runs, not of what it learns: a checkpoint fits whatever they are.
RUNTIME_SETTINGS = frozenset({"threads", "eval_batch_size"})
# Query x candidate pairs a teacher scores per call: distance scores build [queries, candidates, dim]
# intermediates, and a round's relation queries on FB15k-237 (25,600 x 237 x 200 floats) took 15 GB at once.
TEACH_CHUNK_PAIRS = 1 << 16


def _model_settings(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key not in RUNTIME_SETTINGS}


def _lookup_table(local_to_alignment: np.ndarray) -> np.ndarray:
    """Dense alignment id -> local id table (-1 where this KB has no member of the class)."""
    size = int(local_to_alignment.max()) + 1 if local_to_alignment.size and local_to_alignment.max() >= 0 else 0
    table = np.full(size, -1, dtype=np.int64)
    aligned = np.flatnonzero(local_to_alignment >= 0)
    table[local_to_alignment[aligned]] = aligned
    return table


class KBWorker:
    """Owns one KB's triples, model, optimiser and faiss index; only soft labels leave it."""

    def __init__(self, name: str, data_dir: str | Path, worker_type: str, settings: dict | None = None) -> None:
        self.name = name
        self.worker_type = worker_type
        self.type_class = WORKER_TYPES.get(worker_type)
        self.settings = self.type_class.validate_settings(settings or {})
        torch.set_num_threads(self.settings.threads)
        self.kb: KnowledgeBase = load_kb(data_dir)
        self.known = KnownAnswers(self.kb.known_triples(), len(self.kb.entities), len(self.kb.relations))
        self._train = torch.from_numpy(self.kb.train)
        # Each training triple's tail query (head, relation) and head query (relation, tail), as ids.
        self._query_ids = {
            kind: torch.from_numpy(np.unique(self.kb.train[:, list(columns)], axis=0, return_inverse=True)[1].reshape(-1))
            for kind, columns in ((QueryKind.TAIL, (0, 1)), (QueryKind.HEAD, (1, 2)))
        }
        self.job_id = ""
        self.distill = DistillSettings()
        self.model: WorkerType | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        self._round_batches: list[torch.Tensor] = []
        self.set_alignment(AlignmentView())

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
    def set_alignment(self, view: AlignmentView) -> None:
        self.alignment = view
        self._entity_aid = np.full(len(self.kb.entities), -1, dtype=np.int64)
        self._relation_aid = np.full(len(self.kb.relations), -1, dtype=np.int64)
        for names, vocabulary, target, what in (
            (view.entities, self.kb.entities, self._entity_aid, "entity"),
            (view.relations, self.kb.relations, self._relation_aid, "relation"),
        ):
            for name, aid in names.items():
                local = vocabulary.index.get(name)
                if local is None:
                    raise DataError(f"alignment names {what} {name!r}, which is not in KB {self.name!r}")
                target[local] = aid
        self._aid_to_entity = _lookup_table(self._entity_aid)
        self._aid_to_relation = _lookup_table(self._relation_aid)
        self._peers: dict[str, _PeerPools] = {}
        for peer, (entity_ids, relation_ids) in view.peers.items():
            entity_mask = torch.from_numpy(np.isin(self._entity_aid, np.asarray(entity_ids, dtype=np.int64)))
            relation_mask = torch.from_numpy(np.isin(self._relation_aid, np.asarray(relation_ids, dtype=np.int64)))
            entity_pool, relation_pool = entity_mask.nonzero().flatten(), relation_mask.nonzero().flatten()
            signature = hash((entity_pool.numpy().tobytes(), relation_pool.numpy().tobytes()))
            self._peers[peer] = _PeerPools(entity_mask, relation_mask, entity_pool, relation_pool, signature)
        self._candidate_cache: dict[tuple[int, QueryKind], tuple[torch.Tensor, torch.Tensor]] = {}

    def _optimizer(self, model) -> torch.optim.Optimizer:
        """Adam, fused: the same update in one pass over each table (~3x faster on CPU; the update of
        the whole entity table was most of a WN18RR step, docs/results.md)."""
        return torch.optim.Adam(model.modules().parameters(), lr=self.settings.learning_rate, fused=True)

    def configure(self, job_id: str, seed: int, distill: dict | None = None, alignment: AlignmentView | None = None) -> dict:
        """Starts a job: a fresh model and optimiser from ``seed``, the job's distillation settings."""
        self.job_id = job_id
        self.distill = DistillSettings.model_validate(distill or {})
        if alignment is not None:
            self.set_alignment(alignment)
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(self.name.encode()))
        self.model = self.type_class(self.kb, self.settings)
        self.optimizer = self._optimizer(self.model)
        self.step = 0
        self._cursor = len(self._train)
        self._round_batches = []
        self._candidate_cache = {}
        return {"parameters": self.model.num_parameters()}

    def _require_model(self) -> WorkerType:
        if self.model is None:
            raise PreconditionError(f"KB {self.name!r} has no model yet: run a job first")
        return self.model

    def _next_batch(self) -> torch.Tensor:
        """Row ids of the next batch of an epoch-wise shuffled pass over the KB's own training triples."""
        size = min(self.settings.batch_size, len(self._train))
        if self._cursor + size > len(self._order):
            self._order = torch.randperm(len(self._train))
            self._cursor = 0
        batch = self._order[self._cursor : self._cursor + size]
        self._cursor += size
        return batch

    # -- teaching --------------------------------------------------------------------------
    def teach(self, round_: int, steps: int, students: list[str]) -> tuple:
        """Samples this round's batches and returns ``(stats, payload_for_student_1, ...)``.

        Each payload is a serialised ``SoftLabels`` message for one student, built from the
        queries of the round's batches whose given parts are aligned with that student.
        """
        model = self._require_model()
        self._round_batches = [self._next_batch() for _ in range(steps)]
        started = time.perf_counter()
        payloads, sizes = [], {}
        model.modules().eval()
        with torch.no_grad():
            lessons: dict[int, list[soft_labels.Block]] = {}
            for student in students:
                pools = self._peers.get(student)
                if pools is not None and pools.signature not in lessons:
                    lessons[pools.signature] = self._soft_labels(model, pools)
                blocks = [] if pools is None else lessons[pools.signature]
                payload = soft_labels.encode(soft_labels.Lesson(self.job_id, round_, self.name, student, tuple(blocks)))
                payloads.append(payload)
                sizes[student] = len(payload)
                labels = (self.name, student, self.job_id)
                metrics.WORKER_SENT_BYTES.labels(*labels).inc(len(payload))
                metrics.WORKER_SENT_MESSAGES.labels(*labels).inc()
        model.modules().train()
        return ({"bytes": sizes, "seconds": time.perf_counter() - started}, *payloads)

    def _soft_labels(self, model: WorkerType, pools: _PeerPools) -> list[soft_labels.Block]:
        steps = torch.cat([torch.full((len(b),), s) for s, b in enumerate(self._round_batches)])
        rows = torch.cat(self._round_batches)
        heads, relations, tails = self._train[rows].unbind(dim=1)
        e, r = pools.entity_mask, pools.relation_mask
        k = self.distill.top_k
        score_dtype = np.dtype(self.distill.score_dtype)
        blocks = []
        for kind, selected, first, second, first_ids, second_ids in (
            (QueryKind.TAIL, e[heads] & r[relations], heads, relations, self._entity_aid, self._relation_aid),
            (QueryKind.HEAD, r[relations] & e[tails], relations, tails, self._relation_aid, self._entity_aid),
            (QueryKind.RELATION, e[heads] & e[tails], heads, tails, self._entity_aid, self._entity_aid),
        ):
            pool = pools.relation_pool if kind == QueryKind.RELATION else pools.entity_pool
            if kind == QueryKind.RELATION and not self.distill.relation_weight:
                continue
            if pool.numel() < 2 or not bool(selected.any()):
                continue  # softmax over a single candidate carries no information
            queries = torch.stack([first[selected], second[selected]], dim=1)
            if kind == QueryKind.RELATION:
                candidates = pool.expand(queries.shape[0], -1)
            else:
                top = self._top_candidates(model, pools, kind, queries, rows[selected], k)
                random = pool[torch.randint(pool.numel(), (queries.shape[0], k))]
                candidates = torch.cat([top, random], dim=1)
            per_call = max(1, TEACH_CHUNK_PAIRS // candidates.shape[1])
            scores = torch.empty(candidates.shape)  # one result, filled slice by slice (see all_pairs_scores)
            for i in range(0, len(queries), per_call):
                scores[i : i + per_call] = model.score_candidates(kind, queries[i : i + per_call], candidates[i : i + per_call])
            scores = scores.numpy().astype(score_dtype)
            candidate_ids = (self._relation_aid if kind == QueryKind.RELATION else self._entity_aid)[candidates.numpy()]
            query_ids = np.stack([first_ids[queries[:, 0].numpy()], second_ids[queries[:, 1].numpy()]], axis=1)
            query_steps = steps[selected].numpy()
            for step in np.unique(query_steps):
                at_step = query_steps == step
                blocks.append(soft_labels.Block(kind, int(step), query_ids[at_step], candidate_ids[at_step], scores[at_step]))
        return blocks

    def _top_candidates(self, model: WorkerType, pools: _PeerPools, kind: QueryKind, queries: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
        """The teacher's top-k among the pool, searched again only for queries whose last search is stale.

        The search is the costly part of teaching (every query against every aligned entity),
        while a query's best candidates move slowly; the scores sent over them are always fresh.
        The cache is keyed by query, (head, relation) or (relation, tail), so that the triples
        that share a query share its search (FB15k-237 has 3x fewer tail queries than triples).
        """
        query_ids = self._query_ids[kind][rows]
        key = (pools.signature, kind)
        if key not in self._candidate_cache:
            count, width = int(self._query_ids[kind].max()) + 1, min(k, pools.entity_pool.numel())
            self._candidate_cache[key] = (torch.full((count, width), -1), torch.full((count,), -(2**62)))
        top, searched_at = self._candidate_cache[key]
        max_age = self.distill.candidate_refresh_epochs * len(self._train) / self.settings.batch_size
        unique, first = np.unique(query_ids.numpy(), return_index=True)
        unique, first = torch.from_numpy(unique), torch.from_numpy(first)
        stale = (self.step - searched_at[unique]) > max_age
        if bool(stale.any()):
            top[unique[stale]] = model.top_candidates(kind, queries[first[stale]], pools.entity_pool, k)
            searched_at[unique[stale]] = self.step
        return top[query_ids]

    # -- learning --------------------------------------------------------------------------
    def _to_local(self, table: np.ndarray, ids: np.ndarray, what: str, teacher: str) -> torch.Tensor:
        inside = (ids >= 0) & (ids < len(table))
        local = np.where(inside, table[np.where(inside, ids, 0)], -1)
        if (local < 0).any():
            bad = int(ids[local < 0].flat[0])
            raise DataError(f"soft labels from {teacher!r} name {what} alignment id {bad}, which KB {self.name!r} does not share")
        return torch.from_numpy(local)

    def _lessons_by_step(self, payloads: tuple[bytes, ...]) -> dict[int, list[_KDBatch]]:
        """Decodes every lesson, translates it to local ids and merges it into per-step batches.

        Each row carries its weight in paper eq. 5: the mean over teachers of (entity KL +
        relation KL), each KL a mean over that teacher's rows of the step.
        """
        rows_by_step: dict[int, list] = defaultdict(list)
        entity, relation = self._aid_to_entity, self._aid_to_relation
        for payload in payloads:
            lesson = soft_labels.decode(payload)
            if lesson.student != self.name:
                raise DataError(f"soft labels for {lesson.student!r} were routed to {self.name!r}")
            labels = (self.name, lesson.teacher, self.job_id)
            metrics.WORKER_RECEIVED_BYTES.labels(*labels).inc(len(payload))
            metrics.WORKER_RECEIVED_MESSAGES.labels(*labels).inc()
            for block in lesson.blocks:
                first, second = {QueryKind.TAIL: (entity, relation), QueryKind.HEAD: (relation, entity), QueryKind.RELATION: (entity, entity)}[block.kind]
                queries = torch.stack(
                    [self._to_local(first, block.queries[:, 0], "query", lesson.teacher), self._to_local(second, block.queries[:, 1], "query", lesson.teacher)],
                    dim=1,
                )
                candidates = self._to_local(relation if block.kind == QueryKind.RELATION else entity, block.candidates, "candidate", lesson.teacher)
                scores = torch.from_numpy(block.scores.astype(np.float32))
                rows_by_step[block.step].append((lesson.teacher, block.kind, queries, candidates, scores))
        merged: dict[int, list[_KDBatch]] = {}
        for step, items in rows_by_step.items():
            teachers = {teacher for teacher, *_ in items}
            rows = Counter()
            for teacher, kind, queries, *_ in items:
                rows[teacher, kind == QueryKind.RELATION] += queries.shape[0]
            groups: dict[tuple, list] = defaultdict(list)
            for teacher, kind, queries, candidates, scores in items:
                relation = kind == QueryKind.RELATION
                weight = (self.distill.relation_weight if relation else 1.0) / (len(teachers) * rows[teacher, relation])
                groups[kind, candidates.shape[1]].append((queries, candidates, scores, torch.full((queries.shape[0],), weight)))
            merged[step] = [_KDBatch(kind, *(torch.cat(column) for column in zip(*parts))) for (kind, _), parts in groups.items()]
        return merged

    def _losses(self, model: WorkerType, batch: torch.Tensor, lessons: list[_KDBatch]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The own loss and KL(teacher || student) on the teachers' candidates, weighted as in paper eq. 5."""
        own, student_scores = model.train_scores(batch, [(b.kind, b.queries, b.candidates) for b in lessons])
        if not lessons:
            return own, None
        temperature = self.distill.temperature
        return own, sum(distillation_kl(b.teacher_scores, scores, temperature, weights=b.weights) for b, scores in zip(lessons, student_scores))

    def train(self, round_: int, steps: int, *payloads: bytes) -> dict:
        """``steps`` updates on this round's batches, each ``(1-alpha) L_own + alpha L_KD`` when it has soft labels."""
        model = self._require_model()
        lessons = self._lessons_by_step(payloads)
        batches = [self._train[rows] for rows in self._round_batches or [self._next_batch() for _ in range(steps)]]
        self._round_batches = []
        alpha = self.distill.alpha
        labels = (self.name, self.job_id)
        own_total = kd_total = 0.0
        kd_steps = 0
        started = time.perf_counter()
        for step, batch in enumerate(batches):
            own, kd = self._losses(model, batch, lessons.get(step, []))
            loss = own
            if kd is not None:
                loss = (1 - alpha) * own + alpha * kd
                kd_total += float(kd.detach())
                kd_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            own_total += float(own.detach())
            self.step += 1
        seconds = time.perf_counter() - started
        triples = sum(len(b) for b in batches)
        loss_mean = own_total / max(1, len(batches))
        kd_mean = kd_total / kd_steps if kd_steps else 0.0
        metrics.WORKER_LOSS.labels(*labels).set(loss_mean)  # before the check: a NaN loss is what the alert looks for
        if kd_steps:
            metrics.WORKER_KD_LOSS.labels(*labels).set(kd_mean)
        if not np.isfinite(loss_mean) or not np.isfinite(kd_mean):
            raise FloatingPointError(f"KB {self.name!r}: loss became {loss_mean} (KD {kd_mean}) at step {self.step}; lower the learning rate")
        metrics.WORKER_STEPS.labels(*labels).inc(len(batches))
        metrics.WORKER_TRIPLES.labels(*labels).inc(triples)
        metrics.WORKER_STEPS_RATE.labels(*labels).set(len(batches) / seconds if seconds > 0 else 0.0)
        metrics.WORKER_TRIPLES_RATE.labels(*labels).set(triples / seconds if seconds > 0 else 0.0)
        return {"loss": loss_mean, "kd_loss": kd_mean, "steps": self.step, "seconds": seconds, "triples": triples}

    # -- evaluation and serving ------------------------------------------------------------
    def evaluate(self, split: str = "test") -> dict:
        model = self._require_model()
        triples = self.kb.split(split)
        model.modules().eval()
        try:
            result: RankingMetrics = evaluate_ranking(model.score_all, triples, self.known, batch_size=self.settings.eval_batch_size)
        finally:
            model.modules().train()
        metrics.WORKER_MRR.labels(self.name, self.job_id, split).set(result.mrr)
        metrics.WORKER_HITS10.labels(self.name, self.job_id, split).set(result.hits_at_10)
        return result.as_dict()

    def predict(self, head: str, relation: str, k: int = 10) -> list[dict]:
        """Top-k tails for (head, relation) among all entities, best first."""
        model = self._require_model()
        for name, vocabulary, what in ((head, self.kb.entities, "entity"), (relation, self.kb.relations, "relation")):
            if name not in vocabulary.index:
                raise NotFoundError(f"{what} {name!r} is not in KB {self.name!r}")
        query = torch.tensor([[self.kb.entities.index[head], self.kb.relations.index[relation]]])
        everything = torch.arange(len(self.kb.entities))
        model.modules().eval()
        try:
            with torch.no_grad():
                top = model.top_candidates(QueryKind.TAIL, query, everything, k)
                scores = model.score_candidates(QueryKind.TAIL, query, top)[0]
        finally:
            model.modules().train()
        tails = top[0].tolist()
        known = set(self.known.pairs(QueryKind.TAIL, query)[1].tolist())
        return [{"entity": self.kb.entities.names[t], "score": float(s), "known": t in known} for t, s in zip(tails, scores.tolist())]

    def export(self) -> dict:
        """Embeddings with their names (entity rows in vocabulary order)."""
        vectors = self._require_model().embeddings()
        return {
            "entity": (list(self.kb.entities.names), vectors["entity"]),
            "relation": (list(self.kb.relations.names), vectors["relation"]),
        }

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> str:
        """Writes model, optimiser and step to ``directory/checkpoint.pt`` atomically."""
        model = self._require_model()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "kb": self.name,
            "worker_type": self.worker_type,
            "settings": self.settings.model_dump(),
            "model": model.modules().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        temporary = directory / f".{CHECKPOINT_FILE}.tmp"
        temporary.write_bytes(buffer.getvalue())
        os.replace(temporary, directory / CHECKPOINT_FILE)
        return str(directory / CHECKPOINT_FILE)

    def load(self, directory: str | Path) -> int:
        """Restores a checkpoint written by :meth:`save`; a bad one raises and changes nothing."""
        self._require_model()  # only into a configured job: the checkpoint restores weights, not job settings
        path = Path(directory) / CHECKPOINT_FILE
        if not path.is_file():
            raise DataError(f"{path}: checkpoint not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a damaged file
            raise DataError(f"{path}: corrupt checkpoint ({type(error).__name__}: {error})") from None
        if not isinstance(state, dict) or {"model", "optimizer", "step", "worker_type"} - state.keys():
            raise DataError(f"{path}: not a kdmkb checkpoint")
        if state["worker_type"] != self.worker_type or _model_settings(state.get("settings") or {}) != _model_settings(self.settings.model_dump()):
            raise DataError(f"{path}: checkpoint is of a {state['worker_type']!r} worker with other settings than KB {self.name!r}")
        candidate = self.type_class(self.kb, self.settings)
        optimizer = self._optimizer(candidate)
        try:
            candidate.modules().load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise DataError(f"{path}: checkpoint does not fit KB {self.name!r} ({error})") from None
        self.model, self.optimizer, self.step = candidate, optimizer, int(state["step"])
        return self.step
