"""``mtl-kgc``: the multi-task cross-encoder of Kim et al. 2020 (MTL-KGC, COLING), KG-BERT plus two auxiliary tasks.

One encoder reads ``[CLS] h [SEP] r [SEP] t [SEP]`` (entity text "name, description") and three
heads read its [CLS] vector: link prediction (LP, a 2-way classifier whose s1 logit is the score),
relation prediction (RP, a softmax over the KB's relations from ``[CLS] h [SEP] t [SEP]``) and
relevance ranking (RR, a sigmoid trained with a margin against corrupted twins). Each step trains
one task, drawn as MT-DNN draws batches. Every (query, candidate) pair is one encoder pass, so
ranking is exact only where that is affordable; ``rerank_k`` adds a structural model of the same
KB, trained alongside, whose top k the cross-encoder reranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from kdmkb.kb_worker.data import KnowledgeBase, ShuffledPasses, contains_sorted
from kdmkb.kb_worker.worker_types.text import TextSettings, attention_mask, encode_in_passes, entity_texts, load_encoder, padded, relation_texts
from kdmkb.kb_worker.worker_types.base import WORKER_TYPES, QueryKind, Ranking, WorkerType
from kdmkb.services.errors import ConfigError

TASKS = ("lp", "rp", "rr")


class MTLKGCSettings(TextSettings):
    tasks: list[str] = Field(
        default_factory=lambda: list(TASKS),
        description="Tasks trained on the shared encoder: lp (link prediction, required: it scores), rp (relation prediction), rr (relevance ranking).",
    )
    negatives: int = Field(1, gt=0, description="Corrupted triples (head or tail replaced by a random entity) per positive, for lp and rr.")
    margin: float = Field(0.1, gt=0, description="Relevance ranking's margin between a triple's sigmoid score and its corrupted twin's.")
    rerank_k: int = Field(0, ge=0, description="0: rank every entity with the cross-encoder; k > 0: rerank the retriever's top k.")
    retriever: str = Field("rotate", description="Worker type of the model that retrieves candidates when rerank_k > 0, trained alongside: one batch of its own per step.")
    retriever_settings: dict = Field(
        default_factory=dict, description="The retriever's settings (its own learning rate and batch_size: a step's batch for it; device and threads are this worker's)."
    )

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        for task in tasks:
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        if "lp" not in tasks:
            raise ValueError("'lp' is required: link prediction's head is what scores and ranks")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"a task is listed twice: {tasks}")
        return tasks

    @model_validator(mode="after")
    def _known_retriever(self) -> "MTLKGCSettings":
        try:
            retriever = WORKER_TYPES.get(self.retriever)
        except ConfigError as error:
            raise ValueError(f"settings.retriever: {error}") from None
        for owned in ("device", "threads"):
            if owned in self.retriever_settings:
                raise ValueError(f"settings.retriever_settings.{owned}: the retriever shares this worker's device and threads")
        try:
            retriever.validate_settings(self.retriever_settings)
        except ValidationError as error:
            raise ValueError(f"settings.retriever_settings: {error}") from None
        return self


def fit_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Segment lengths after cutting the longest segment (of several as long, the last) one token at a time until they fit ``budget``.

    KG-BERT's rule, so a long description gives way before a short name or relation does; in
    closed form: every segment is capped at the largest ``c`` that fits, and the first of the
    capped ones get back the tokens left over.
    """
    if sum(lengths) <= budget:
        return list(lengths)
    low, high = 0, max(lengths)
    while low < high:
        middle = (low + high + 1) // 2
        if sum(min(length, middle) for length in lengths) <= budget:
            low = middle
        else:
            high = middle - 1
    fitted = [min(length, low) for length in lengths]
    spare = budget - sum(fitted)
    for i, length in enumerate(lengths):
        if spare and length > low:
            fitted[i] += 1
            spare -= 1
    return fitted


def build_sequence(segments: Sequence[list[int]], cls_id: int, sep_id: int, max_length: int) -> tuple[list[int], list[int]]:
    """``[CLS] s1 [SEP] s2 [SEP] ...`` in at most ``max_length`` tokens, and its segment ids: 0, 1, 0, ... per segment (h r t: 0 1 0; h t: 0 1)."""
    lengths = fit_lengths([len(segment) for segment in segments], max_length - 1 - len(segments))
    ids, types = [cls_id], [0]
    for i, (segment, length) in enumerate(zip(segments, lengths)):
        ids += segment[:length] + [sep_id]
        types += [i % 2] * (length + 1)
    return ids, types


class TaskSchedule:
    """MT-DNN's order of tasks: a step draws a task with probability proportional to its batches left in the pass; a spent pass starts again.

    Equivalent to shuffling the concatenated batch lists of the tasks, one pass after another.
    """

    def __init__(self, batches: dict[str, int], generator: torch.Generator) -> None:
        self.tasks = tuple(batches)
        self.per_pass = torch.tensor([float(count) for count in batches.values()])
        self.left = self.per_pass.clone()
        self.generator = generator

    def draw(self) -> str:
        if not self.left.any():
            self.left = self.per_pass.clone()
        index = int(torch.multinomial(self.left, 1, generator=self.generator))
        self.left[index] -= 1
        return self.tasks[index]


def _generator_of_its_own() -> torch.Generator:
    """A generator seeded from torch's: what it draws (a step's task, the retriever's passes) must not shift the negatives' draws."""
    return torch.Generator().manual_seed(int(torch.randint(1 << 62, ())))


@WORKER_TYPES.register("mtl-kgc")
class MTLKGCWorker(WorkerType):
    """MTL-KGC (see the module docstring); no embeddings, exact ranking unless ``rerank_k`` names a retriever's shortlist."""

    settings_model = MTLKGCSettings
    # One pair is one encoder pass over up to max_length tokens.
    slice_pairs = 256

    @classmethod
    def check_kb(cls, kb: KnowledgeBase, settings: MTLKGCSettings) -> None:
        if settings.rerank_k:
            retriever = WORKER_TYPES.get(settings.retriever)
            retriever.check_kb(kb, retriever.validate_settings(settings.retriever_settings))

    def __init__(self, kb: KnowledgeBase, settings: MTLKGCSettings) -> None:
        super().__init__(kb, settings)
        self.check_kb(kb, settings)
        tokenizer, encoder = load_encoder(settings.encoder)
        config = encoder.config
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ConfigError(f"settings.encoder: {settings.encoder or 'the default encoder'!r} has no [CLS] and [SEP] tokens to build KG-BERT inputs with")
        if getattr(config, "type_vocab_size", 0) < 2:
            raise ConfigError("settings.encoder: the encoder has a single segment type; MTL-KGC marks the relation as segment 1 (a BERT-style encoder is needed)")
        if settings.max_length > config.max_position_embeddings:
            raise ConfigError(f"settings.max_length: {settings.max_length} is beyond the encoder's {config.max_position_embeddings} positions")
        self._special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0)
        names, descriptions = entity_texts(kb)
        texts = [f"{name}, {description}" if description else name for name, description in zip(names, descriptions)]
        # Token ids once per text: a segment is never longer than max_length, so neither is its cache.
        self.entity_tokens: list[list[int]] = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=settings.max_length)["input_ids"]
        self.relation_tokens: list[list[int]] = tokenizer(relation_texts(kb), add_special_tokens=False, truncation=True, max_length=settings.max_length)["input_ids"]

        width = config.hidden_size
        heads = {"lp": 2, "rp": self.num_relations, "rr": 1}
        self.network = nn.ModuleDict({"encoder": encoder, "dropout": nn.Dropout(config.hidden_dropout_prob)})
        for task in settings.tasks:
            head = nn.Linear(width, heads[task])
            nn.init.normal_(head.weight, std=config.initializer_range)  # BERT's initialisation of classifier heads
            nn.init.zeros_(head.bias)
            self.network[task] = head
        self.retriever: WorkerType | None = None
        if settings.rerank_k:
            retriever = WORKER_TYPES.get(settings.retriever)
            self.retriever = retriever(kb, retriever.validate_settings({**settings.retriever_settings, "device": self.device.type}))
            self.network["retriever"] = self.retriever.modules()
        self.network.to(self.device)

        train = torch.from_numpy(kb.train)
        self._train_keys = torch.sort(self._triple_keys(train)).values
        # A step's batch of positives serves the drawn task (LP and RR add its negatives), so each
        # task has the KB's number of batches per pass.
        steps_per_pass = max(1, math.ceil(len(kb.train) / settings.batch_size))
        self.schedule = TaskSchedule({task: steps_per_pass for task in settings.tasks}, _generator_of_its_own())
        self._drawn: dict[str, tuple[int, object]] = {"task": (-1, "")}  # what this step drew, by name: see _once_per_step
        if self.retriever is not None:
            # A cross-encoder step sees a few triples; the retriever, a cheap model, needs its own
            # batch size (and so its own passes over train) to learn as much in as many steps.
            self._train = train
            self._retriever_passes = ShuffledPasses(len(train), self.retriever.settings.batch_size, _generator_of_its_own())

    def modules(self) -> nn.Module:
        return self.network

    def training_state(self) -> dict:
        state = {"left": self.schedule.left, "generator": self.schedule.generator.get_state(), "step_task": list(self._drawn["task"])}
        if self.retriever is not None:
            state["retriever"] = {"passes": self._retriever_passes.state(), "own": self.retriever.training_state()}
        return state

    def load_training_state(self, state: dict) -> None:
        self.schedule.left = state["left"].clone()
        self.schedule.generator.set_state(state["generator"])
        self._drawn["task"] = (int(state["step_task"][0]), str(state["step_task"][1]))
        if self.retriever is not None:
            self._retriever_passes.restore(state["retriever"]["passes"])
            self.retriever.load_training_state(state["retriever"]["own"])

    def parameter_groups(self) -> list[dict]:
        settings: MTLKGCSettings = self.settings  # type: ignore[assignment]
        heads = [p for name, module in self.network.items() if name not in ("encoder", "retriever") for p in module.parameters()]
        groups = [
            {"params": [p for p in self.network["encoder"].parameters() if p.requires_grad], "lr": settings.encoder_learning_rate},
            {"params": heads, "lr": settings.learning_rate},
        ]
        return groups + (self.retriever.parameter_groups() if self.retriever is not None else [])

    # -- encoding ------------------------------------------------------------------------------
    def _sequence(self, *segments: list[int]) -> tuple[list[int], list[int]]:
        cls_id, sep_id, _ = self._special
        return build_sequence(segments, cls_id, sep_id, self.settings.max_length)

    def _cls_vectors(self, sequences: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Dropout of the [CLS] vectors ``[n, hidden]``."""
        encoder = self.network["encoder"]
        if not sequences:
            return torch.zeros(0, encoder.config.hidden_size, device=self.device)
        if encoder.training:
            self.trained_sequences += len(sequences)
        pad = self._special[2]

        def inputs(chunk: list[int]) -> tuple[torch.Tensor, ...]:
            tokens, segments = [sequences[i][0] for i in chunk], [sequences[i][1] for i in chunk]
            return padded(tokens, pad, self.device), attention_mask(tokens, self.device), padded(segments, 0, self.device)

        def cls(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            return encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state[:, 0]

        return self.network["dropout"](encode_in_passes([len(ids) for ids, _ in sequences], self.settings.eval_batch_size, inputs, cls))

    def _triple_vectors(self, triples: torch.Tensor) -> torch.Tensor:
        """[CLS] vectors of ``[CLS] h [SEP] r [SEP] t [SEP]`` per row of ``triples [n, 3]``."""
        entities, relations = self.entity_tokens, self.relation_tokens
        return self._cls_vectors([self._sequence(entities[h], relations[r], entities[t]) for h, r, t in triples.tolist()])

    def lp_logits(self, triples: torch.Tensor) -> torch.Tensor:
        """Link prediction's ``[s0, s1]`` per triple ``[n, 3] -> [n, 2]``."""
        return self.network["lp"](self._triple_vectors(triples))

    def rp_logits(self, pairs: torch.Tensor) -> torch.Tensor:
        """Relation prediction's logits over every relation from ``[CLS] h [SEP] t [SEP]``: ``[n, 2] -> [n, num_relations]``."""
        entities = self.entity_tokens
        return self.network["rp"](self._cls_vectors([self._sequence(entities[h], entities[t]) for h, t in pairs.tolist()]))

    def rr_scores(self, triples: torch.Tensor) -> torch.Tensor:
        """Relevance ranking's ``sigmoid(C W_RR)`` per triple ``[n, 3] -> [n]``."""
        return torch.sigmoid(self.network["rr"](self._triple_vectors(triples))).squeeze(-1)

    # -- scoring -------------------------------------------------------------------------------
    def score(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """LP's s1 logit of each (query, candidate) triple (the paper's ranking score).

        Relation queries read the RP head instead where it is trained: one encoder pass per
        (h, t) rather than one per relation, and a softmax over relations is what it learned,
        which is what a relation lesson compares.
        """
        if kind == QueryKind.RELATION and "rp" in self.network:
            logits = self.rp_logits(queries)
            return logits if candidates is None else logits.gather(1, candidates.to(logits.device))
        queries = queries.cpu()
        if candidates is None:
            width = self.num_relations if kind == QueryKind.RELATION else self.num_entities
            candidates = torch.arange(width).expand(queries.shape[0], -1)
        candidates = candidates.cpu()
        first, second = (part[:, None].expand(candidates.shape) for part in queries.unbind(dim=1))
        if kind == QueryKind.TAIL:
            triples = (first, second, candidates)
        elif kind == QueryKind.HEAD:
            triples = (candidates, first, second)
        else:
            triples = (first, candidates, second)
        return self.lp_logits(torch.stack(triples, dim=-1).reshape(-1, 3))[:, 1].reshape(candidates.shape)

    def top_candidates(self, kind: QueryKind, queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
        """With a retriever, the cross-encoder's best ``k`` of the retriever's top ``max(k, rerank_k)`` of the pool; without, exact."""
        if self.retriever is None:
            return super().top_candidates(kind, queries, pool, k)
        self.retriever.updates = self.updates  # its cached index follows this worker's optimiser steps
        device = self.retriever.device
        shortlist = self.retriever.top_candidates(kind, queries.to(device), pool.to(device), max(k, self.settings.rerank_k)).cpu()
        best = self.score_sliced(kind, queries, shortlist).topk(min(k, shortlist.shape[1]), dim=1).indices
        return shortlist.gather(1, best).to(pool.device)

    def ranking(self) -> Ranking:
        if self.retriever is None:
            return Ranking()
        retriever = self.retriever

        def retrieve(kind: QueryKind, queries: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return retriever.score(kind, queries.to(retriever.device)).float().cpu()

        return Ranking(retrieve, self.settings.retriever, self.settings.rerank_k)

    # -- training ------------------------------------------------------------------------------
    def _triple_keys(self, triples: torch.Tensor) -> torch.Tensor:
        heads, relations, tails = triples.unbind(dim=-1)
        return (heads * self.num_relations + relations) * self.num_entities + tails

    def corruptions(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``negatives`` corruptions ``[b, k, 3]`` per positive (head or tail, a coin flip each, replaced by a random entity) and which are not train triples."""
        size, count = batch.shape[0], self.settings.negatives
        batch = batch.cpu()
        entities = torch.randint(self.num_entities, (size, count))
        corrupt_tail = torch.rand(size, count) < 0.5
        fake = batch[:, None, :].repeat(1, count, 1)
        fake[..., 0] = torch.where(corrupt_tail, fake[..., 0], entities)
        fake[..., 2] = torch.where(corrupt_tail, entities, fake[..., 2])
        return fake, ~contains_sorted(self._train_keys, self._triple_keys(fake))

    def _once_per_step(self, name: str, draw):
        """``draw()`` once per optimiser step (``updates``), however often the step asks (train_scores and train_loss both do)."""
        step, value = self._drawn.get(name, (-1, None))
        if step != self.updates:
            value = draw()
            self._drawn[name] = (self.updates, value)
        return value

    def task(self) -> str:
        """This optimiser step's task."""
        return self._once_per_step("task", self.schedule.draw)

    def retriever_batch(self) -> torch.Tensor:
        """This optimiser step's batch for the retriever (its own batch_size)."""
        return self._once_per_step("retriever_batch", lambda: self._train[self._retriever_passes.next()])

    def train_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The drawn task's loss on ``batch`` (plus the retriever's own loss on its own batch, when there is one)."""
        task = self.task()
        if task == "rp":
            loss = F.cross_entropy(self.rp_logits(batch[:, [0, 2]]), batch[:, 1].to(self.device))
        else:
            fake, valid = self.corruptions(batch)
            negatives = fake[valid]
            if task == "lp":
                labels = torch.cat([torch.ones(batch.shape[0]), torch.zeros(negatives.shape[0])]).long().to(self.device)
                loss = F.cross_entropy(self.lp_logits(torch.cat([batch.cpu(), negatives])), labels)
            else:
                scores = self.rr_scores(torch.cat([batch.cpu(), negatives]))
                positive = scores[: batch.shape[0], None].expand(valid.shape)[valid.to(self.device)]
                hinge = torch.relu(scores[batch.shape[0] :] - positive + self.settings.margin)
                loss = hinge.sum() / max(1, hinge.numel())
        if self.retriever is not None:
            loss = loss + self.retriever.train_loss(self.retriever_batch())
        return loss
