"""The student side of a KB: asking teachers (pull), reading their soft labels, and the training steps that learn from them."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
import torch

from kdmkb.kb_worker import exchange
from kdmkb.kb_worker.alignment_view import PeerPools
from kdmkb.kb_worker.combining import LabelledRows, StepLessons, TeacherCombination
from kdmkb.kb_worker.losses import with_tail_bucket
from kdmkb.kb_worker.ranking import KnownAnswers
from kdmkb.kb_worker.shared_lists import concat_rows, is_shared
from kdmkb.kb_worker.teacher import Side
from kdmkb.kb_worker.worker_types import QueryKind
from kdmkb.services.errors import DataError


class Student(Side):
    """Learns ``(1-alpha) L_own + alpha L_KD`` where ``L_KD`` is its :class:`TeacherCombination` of the step's lessons."""

    def __init__(self, side: Side, combination: TeacherCombination) -> None:
        super().__init__(**vars(side))
        self.combination = combination
        model = self.model
        self.optimizer = model.optimizer(combination.parameter_groups(model.settings.learning_rate))
        self.train_answers = KnownAnswers(model.kb.train, model.num_entities, model.num_relations)

    # -- pull: the student's own queries ---------------------------------------------------------
    def ask(self, round_: int, batches: list[torch.Tensor], train: torch.Tensor, teacher: str, rule: str) -> bytes:
        """A ``Queries`` message for ``teacher`` over the queries of ``batches`` whose given parts it shares with it.

        Under the ``listed`` rule the student names the candidates: its own top-k among the
        shared entities plus k random ones (every shared relation for relation queries); under
        ``shared``, one list per block (:meth:`_shared_candidates`).
        """
        pools = self.alignment.peers.get(teacher)
        blocks = []
        if pools is not None:
            for step, rows in enumerate(batches):
                for kind, _, queries in pools.exchangeable(train[rows], relations=bool(self.distill.relation_weight)):
                    candidates = None
                    if rule == "listed":
                        candidates = self.alignment.aligned_candidates(kind, self._own_candidates(kind, queries, pools))
                    elif rule == "shared":
                        candidates = self.alignment.aligned_candidates(kind, self._shared_candidates(kind, queries, pools))
                    blocks.append(exchange.QueryBlock(kind, step, self.alignment.aligned_queries(kind, queries), candidates))
        message = exchange.Queries(self.job_id, round_, self.name, teacher, exchange.CANDIDATE_RULES[rule], self.distill.top_k, tuple(blocks))
        return exchange.encode_queries(message)

    def _own_candidates(self, kind: QueryKind, queries: torch.Tensor, pools: PeerPools) -> torch.Tensor:
        """The student's own top-k among the shared ids plus as many random ones (every shared relation for relation queries)."""
        pool = pools.pool(kind)
        if kind == QueryKind.RELATION:
            return pool.expand(queries.shape[0], -1)
        top = self.model.top_candidates(kind, queries, pool, self.distill.top_k)
        return pools.with_random(kind, top, top.shape[1])

    def _shared_candidates(self, kind: QueryKind, queries: torch.Tensor, pools: PeerPools) -> torch.Tensor:
        """One list for all ``queries``: the union of the student's top-k of each and of their train answers, among the shared ids
        (every shared relation for relation queries); the teacher adds a tail bucket for the rest."""
        if kind == QueryKind.RELATION:
            return pools.pool(kind).expand(queries.shape[0], -1)
        _, answers = self.train_answers.pairs(kind, queries)
        top = self.model.top_candidates(kind, queries, pools.pool(kind), self.distill.top_k)
        listed = torch.unique(torch.cat([top.flatten(), answers]))
        listed = listed[pools.entity_mask[listed]]
        return listed.expand(queries.shape[0], -1)

    # -- lessons ---------------------------------------------------------------------------------
    def lessons(self, messages: Iterable[bytes], weights: dict[str, float]) -> tuple[dict[int, StepLessons], list[tuple[str, int]]]:
        """Decodes every ``SoftLabels`` message into local ids, grouped per step by (kind, candidate width), each row tagged with its teacher.

        ``messages`` are read one at a time (a caller may fetch each as it is read). Also returns
        each message's teacher and size.
        """
        rows_by_step: dict[int, list] = defaultdict(list)
        senders = []
        for payload in messages:
            labels = exchange.decode(payload)
            senders.append((labels.teacher, len(payload)))
            if labels.student != self.name:
                raise DataError(f"soft labels for {labels.student!r} were routed to {self.name!r}")
            for block in labels.blocks:
                queries = self.alignment.local_queries(block.kind, block.queries, labels.teacher)
                candidates = self.alignment.local_candidates(block.kind, block.candidates, labels.teacher)
                logits = torch.from_numpy(block.scores.astype(np.float32))
                rows_by_step[block.step].append((labels.teacher, block.kind, block.tail, *(t.to(self.model.device) for t in (queries, candidates, logits))))
        steps = {}
        for step, items in rows_by_step.items():
            teachers = tuple(dict.fromkeys(teacher for teacher, *_ in items))
            index = {teacher: i for i, teacher in enumerate(teachers)}
            groups: dict[tuple, list] = defaultdict(list)
            for teacher, kind, tail, queries, candidates, scores in items:
                groups[kind, candidates.shape[1], tail].append((queries, candidates, scores, torch.full((queries.shape[0],), index[teacher], device=scores.device)))
            merged = tuple(LabelledRows(kind, *(concat_rows(list(column)) for column in zip(*parts)), tail=tail) for (kind, _, tail), parts in groups.items())
            steps[step] = StepLessons(teachers, torch.tensor([float(weights.get(t, 1.0)) for t in teachers], device=self.model.device), merged)
        return steps, senders

    # -- training --------------------------------------------------------------------------------
    def train(self, batches: list[torch.Tensor], lessons: dict[int, StepLessons], progress: Callable[[int], None] | None = None) -> dict:
        """One update per batch (each counted by ``progress``); returns the mean own and KD losses and what the combination chose."""
        model, alpha, scale = self.model, self.distill.alpha, self.model.logit_scale
        own_total = kd_total = 0.0
        kd_steps = 0
        started = time.perf_counter()
        for step, batch in enumerate(batches):
            lesson = lessons.get(step)
            groups = lesson.groups if lesson is not None else ()
            batch = batch.to(model.device)
            requests, rows = [], []
            for group in groups:
                if self._scores_everything(group):  # each distinct query once: teachers label the same queries
                    queries, inverse = torch.unique(group.queries, dim=0, return_inverse=True)
                    requests.append((group.kind, queries, None))
                    rows.append(inverse)
                else:
                    requests.append((group.kind, group.queries, group.candidates))
                    rows.append(None)
            own, student_scores = model.train_scores(batch, requests)
            loss = own
            if lesson is not None:
                student_scores = [scores if inverse is None else scores[inverse] for scores, inverse in zip(student_scores, rows)]
                logits = [with_tail_bucket(scores, g.candidates) if g.tail else scores for g, scores in zip(groups, student_scores)]
                kd = self.combination.loss(lesson, [scores * scale for scores in logits], batch)
                loss = (1 - alpha) * own + alpha * kd
                kd_total += float(kd.detach())
                kd_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            model.updates += 1
            own_total += float(own.detach())
            if progress is not None:
                progress(1)
        return {
            "loss": own_total / max(1, len(batches)),
            "kd_loss": kd_total / kd_steps if kd_steps else 0.0,
            "kd_steps": kd_steps,
            "seconds": time.perf_counter() - started,
            **self.combination.statistics(),
        }

    def _scores_everything(self, group: LabelledRows) -> bool:
        """Whether the student scores every entity (relation) for ``group``: for a tail bucket, or when the candidates are all of them in order (one matrix product)."""
        if group.tail:
            return True
        everything = self.model.num_relations if group.kind == QueryKind.RELATION else self.model.num_entities
        if group.candidates.shape[1] != everything:
            return False
        candidates = group.candidates[:1] if is_shared(group.candidates) else group.candidates
        return bool((candidates == torch.arange(everything, device=candidates.device)).all())
