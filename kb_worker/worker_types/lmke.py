"""``lmke``: contrastive LMKE (C-LMKE, Wang et al. 2022, §3.3), a bi-encoder over entity descriptions.

Sequences (learned tokens are input embeddings written over placeholder positions):

- query of a tail query (h, r): ``[CLS] [h] h-text [r] r-text [MASK] [SEP]``, q = the query
  encoder's output at ``[MASK]``. A head query (r, t) is the query of (t, r^-1): ``[CLS] [t] t-text
  [r^-1] "inverse " r-text [MASK] [SEP]``, where ``[r^-1]`` is a learned relation token of its own (one
  per relation and direction) and the text is prefixed as SimKGC does, so the encoder sees the
  direction in both. An entity's text is ``name: description`` (its name alone without one).
- key of entity t: ``[CLS] [t] t-text [SEP]`` through the key encoder, k = its output at ``[t]``:
  the slot of the learned entity token, so the key is that token read in the context of its
  description (the paper's reference code reads there too; the [CLS] of all-MiniLM-L6-v2 is not
  trained as a sentence vector either, its pooling is a mean). The key encoder is a copy of the
  query encoder that shares its word embeddings and the entity tokens; its other weights are its own.

Matching (eq. 2): ``logit(q, k) = MLP([q; k; q - k; q * k; log(deg(given) + 1); log(deg(candidate) + 1)])``,
a two-layer MLP, degrees counted on the KB's own train triples. The degree of the *candidate* enters
(the reference code once gave every candidate the target's: an answer leak). ``score`` is that logit
(``logit_scale`` 1); a relation query (h, t) scores each candidate relation r by the query of (h, r)
against the key of t.

Training: in-batch negatives. Each of a batch's tail (head) queries is matched with the keys of the
batch's tails (heads), and of the last ``memory_bank`` steps' entities (detached); every candidate
that is a train answer of the query is a positive. The loss is the paper's BCE with positives
averaged and negatives weighted by a detached softmax of their probabilities (:func:`contrastive_bce`).
A student's step encodes each distinct query and key once for its own loss and the KD scores it is asked
for (:meth:`LMKEWorker.train_scores`).

Search: the key matrix of every entity is encoded once per model version (``updates``) outside
training. ``top_candidates`` shortlists ``shortlist_factor * k`` entities with faiss by the linear
part of the matcher (its output layer applied to its first layer's pre-activation, ReLU left out),
which is an inner product (:meth:`Matcher.retrieval_keys`), and reranks them exactly. ``ranking`` is
exact: one key per entity, one query per test query, one MLP pass per pair.

Ablations (settings): ``matcher = "cosine"`` replaces the MLP by a scaled cosine of q and k
(:class:`CosineMatcher`); ``degrees = false`` feeds the MLP zeros for both degrees.
"""

from __future__ import annotations

import copy
import math
from typing import Literal, NamedTuple

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdmkb.kb_worker.candidates import PoolIndex
from kdmkb.kb_worker.data import KnowledgeBase
from kdmkb.kb_worker import ranking  # a module: ranking imports worker_types, which imports this
from kdmkb.kb_worker.worker_types.text import TextSettings, attention_mask, encode_in_passes, encoder_path, entity_texts, load_encoder, padded, relation_texts
from kdmkb.kb_worker.worker_types.base import WORKER_TYPES, QueryKind, WorkerType, reciprocal_tail_query
from kdmkb.services.errors import ConfigError


class LMKESettings(TextSettings):
    hidden: int = Field(0, ge=0, description="Width of the matcher MLP's hidden layer; 0: the encoder's hidden size, as in the paper.")
    memory_bank: int = Field(
        0,
        ge=0,
        description=(
            "Earlier training steps whose entity keys (detached) join each step's in-batch candidates, as negatives or, where true, positives; 0: in-batch keys only. "
            "Where stored keys are almost never positives (many entities), telling stale keys from fresh ones is a shortcut: on WN18RR 8 steps collapsed every key to one direction within 100 steps."
        ),
    )
    self_negatives: bool = Field(
        False,
        description=(
            "Each query's candidates also hold the batch's given entities, its own among them (SimKGC's self-negatives): "
            "a query contains its entity's text, and without them that entity ranked first for 93 % of WN18RR test queries."
        ),
    )
    shortlist_factor: int = Field(4, gt=0, description="top_candidates reranks this many times k entities that faiss retrieves by the matcher's linear part.")
    matcher: Literal["mlp", "cosine"] = Field(
        "mlp", description="mlp: the paper's matcher over [q; k; q-k; q*k; degrees]; cosine: the dot-product ablation, cos(q, k) times a learned scale."
    )
    degrees: bool = Field(True, description="Feed log(degree + 1) of the query's entity and of each candidate to the mlp matcher (false: the ablation without them).")


def contrastive_bce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The paper's ``L(q, K)`` (§3.3), averaged over queries: ``logits [q, c]``, ``positive [q, c]`` bool.

    Positives' BCE terms are averaged (``w = 1 / |K+|``); negatives' are weighted by a detached
    softmax over the negatives of their *probabilities* ``p(q, k-)`` (self-adversarial, as written
    there; :func:`kdmkb.kb_worker.losses.self_adversarial_loss` takes it over logits).
    """
    positive_term = -(F.logsigmoid(logits) * positive).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    with torch.no_grad():
        weights = torch.softmax(torch.sigmoid(logits).masked_fill(positive, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # rows without negatives
    negative_term = -(weights * F.logsigmoid(-logits)).sum(dim=1)
    return (positive_term + negative_term).mean()


def first_occurrences(ids: torch.Tensor) -> torch.Tensor:
    """Mask of the first occurrence of each value of a 1-d tensor."""
    values, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((values.numel(),), ids.numel(), device=ids.device).scatter_reduce(0, inverse, torch.arange(ids.numel(), device=ids.device), "amin")
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[first] = True
    return keep


class Matcher(nn.Module):
    """Eq. 2's two-layer MLP over ``[q; k; q - k; q * k; log(deg_q + 1); log(deg_k + 1)]``, as logits.

    Its first layer is evaluated in parts, ``A q + B k + P (q * k) + degree terms``: the query and
    key parts once per query and per key, and only ``P (q * k)`` per pair (a quarter of the work of
    concatenating the features of every pair).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(4 * dim + 2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def _first(self) -> tuple[torch.Tensor, ...]:
        weight, d = self.mlp[0].weight, self.dim
        on_difference = weight[:, 2 * d : 3 * d]
        return weight[:, :d] + on_difference, weight[:, d : 2 * d] - on_difference, weight[:, 3 * d : 4 * d], weight[:, 4 * d], weight[:, 4 * d + 1]

    def query_part(self, queries: torch.Tensor, log_degree: torch.Tensor) -> torch.Tensor:
        on_query, _, _, on_degree, _ = self._first()
        return queries @ on_query.T + log_degree[..., None] * on_degree + self.mlp[0].bias

    def key_part(self, keys: torch.Tensor, log_degree: torch.Tensor) -> torch.Tensor:
        _, on_key, _, _, on_degree = self._first()
        return keys @ on_key.T + log_degree[..., None] * on_degree

    def forward(self, queries: torch.Tensor, query_part: torch.Tensor, keys: torch.Tensor, key_part: torch.Tensor) -> torch.Tensor:
        """Logits of broadcastable ``[..., d]`` queries and keys, given their parts."""
        pre = query_part + key_part + (queries * keys) @ self._first()[2].T
        return self.mlp[2](torch.relu(pre)).squeeze(-1)

    def retrieval_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """``[(P^T w2) * q; 1]``: with :meth:`retrieval_keys`, ``w2 . (B k + P (q * k) + deg_k term)``, the linear part's key-dependent terms."""
        out = self.mlp[2].weight[0]
        return torch.cat([queries * (out @ self._first()[2]), torch.ones_like(queries[:, :1])], dim=1)

    def retrieval_keys(self, keys_and_degree: torch.Tensor) -> torch.Tensor:
        """``[k; w2 . (B k + deg_k term)]`` of ``[k; log(deg_k + 1)]`` rows."""
        keys, log_degree = keys_and_degree[:, :-1], keys_and_degree[:, -1]
        return torch.cat([keys, (self.key_part(keys, log_degree) @ self.mlp[2].weight[0])[:, None]], dim=1)


class CosineMatcher(nn.Module):
    """The dot-product ablation of :class:`Matcher`, with its interface: ``scale * cos(q, k)``, degrees unused.

    The scale starts at 20 (a temperature of 0.05, SimKGC's) and is learned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def query_part(self, queries: torch.Tensor, log_degree: torch.Tensor) -> torch.Tensor:
        return F.normalize(queries, dim=-1) * self.log_scale.exp()

    def key_part(self, keys: torch.Tensor, log_degree: torch.Tensor) -> torch.Tensor:
        return F.normalize(keys, dim=-1)

    def forward(self, queries: torch.Tensor, query_part: torch.Tensor, keys: torch.Tensor, key_part: torch.Tensor) -> torch.Tensor:
        return (query_part * key_part).sum(dim=-1)

    def retrieval_queries(self, queries: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.query_part(queries, queries[:, 0]), torch.ones_like(queries[:, :1])], dim=1)

    def retrieval_keys(self, keys_and_degree: torch.Tensor) -> torch.Tensor:
        keys = keys_and_degree[:, :-1]
        return torch.cat([self.key_part(keys, keys[:, 0]), torch.zeros_like(keys[:, :1])], dim=1)


class LMKEModel(nn.Module):
    """Query and key encoders (word embeddings shared), learned entity and relation tokens, the matcher; every learned weight."""

    def __init__(self, encoder: nn.Module, num_entities: int, num_relations: int, settings: LMKESettings, log_degree: torch.Tensor) -> None:
        super().__init__()
        self.query_encoder = encoder
        self.key_encoder = copy.deepcopy(encoder)
        self.key_encoder.set_input_embeddings(encoder.get_input_embeddings())
        dim = encoder.config.hidden_size
        self.entity = nn.Embedding(num_entities, dim)
        self.relation = nn.Embedding(2 * num_relations, dim)  # forward tokens, then inverse ones
        for table in (self.entity, self.relation):
            nn.init.normal_(table.weight, std=getattr(encoder.config, "initializer_range", 0.02))  # the scale of the encoder's own embeddings
        self.matcher = Matcher(dim, settings.hidden or dim) if settings.matcher == "mlp" else CosineMatcher()
        self.register_buffer("log_degree", log_degree, persistent=False)


class StepEncodings(NamedTuple):
    """A training step's encodings: each distinct query and each distinct key it needs, encoded once."""

    queries: torch.Tensor  # [q, d]: the batch's tail queries, its head queries, then each entity request's, in order
    given: torch.Tensor  # [q]: each query's given entity
    entities: torch.Tensor  # sorted distinct entity ids whose keys were encoded
    keys: torch.Tensor  # [len(entities), d]

    def keys_of(self, ids: torch.Tensor) -> torch.Tensor:
        return self.keys[torch.searchsorted(self.entities, ids.contiguous())]


class Sequence(NamedTuple):
    """Token ids of one sequence, the positions its learned tokens overwrite, and the position read out."""

    ids: list[int]
    slots: tuple[int, ...]
    read: int


@WORKER_TYPES.register("lmke")
class LMKEWorker(WorkerType):
    """C-LMKE (see the module docstring): a query encoder, a key encoder and an MLP matcher."""

    settings_model = LMKESettings
    embedding_layout = {"entity": "[dim] the key encoder's entity keys (eval mode)", "relation": "[dim] the forward relation tokens"}
    # A pair costs the matcher (d + hidden) floats of intermediates; a relation query's pair one query encoding.
    slice_pairs = 1 << 15

    @classmethod
    def check_kb(cls, kb: KnowledgeBase, settings: LMKESettings) -> None:
        if kb.entity_text is None:
            raise ConfigError("worker_type: lmke encodes entity descriptions, and the KB folder has no entity_text.tsv (docs/data.md)")
        encoder_path(settings.encoder)

    def __init__(self, kb: KnowledgeBase, settings: LMKESettings) -> None:
        super().__init__(kb, settings)
        self.check_kb(kb, settings)
        tokenizer, encoder = load_encoder(settings.encoder)
        if settings.max_length > encoder.config.max_position_embeddings:
            raise ConfigError(f"settings.max_length: {settings.max_length} is more than the encoder's {encoder.config.max_position_embeddings} positions")
        if tokenizer.mask_token_id is None or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ConfigError("settings.encoder: its tokenizer lacks a [CLS], [SEP] or [MASK] token")
        self.special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id or 0)
        names, descriptions = entity_texts(kb)
        relations = relation_texts(kb)

        def tokens(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=settings.max_length)["input_ids"]

        self.entity_tokens = tokens([f"{name}: {description}" if description else name for name, description in zip(names, descriptions)])
        self.relation_tokens = tokens(relations + [f"inverse {text}" for text in relations])
        degree = np.bincount(kb.train[:, 0], minlength=self.num_entities) + np.bincount(kb.train[:, 2], minlength=self.num_entities)
        log_degree = torch.log1p(torch.from_numpy(degree).float()) * float(settings.degrees)
        self.model = LMKEModel(encoder, self.num_entities, self.num_relations, settings, log_degree).to(self.device)
        self.train_answers = ranking.KnownAnswers(kb.train, self.num_entities, self.num_relations)
        self._index = PoolIndex(faiss.METRIC_INNER_PRODUCT)
        self._keys: tuple[int, torch.Tensor] | None = None  # (updates, every entity's key) outside training
        self._bank: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (updates, entity ids, detached keys) per training step

    def modules(self) -> nn.Module:
        return self.model

    def training_state(self) -> dict:
        return {"bank": [list(entry) for entry in self._bank]}

    def load_training_state(self, state: dict) -> None:
        self._bank = [(int(updates), ids.to(self.device), keys.to(self.device)) for updates, ids, keys in state["bank"]]

    def parameter_groups(self) -> list[dict]:
        """The encoders (shared word embeddings once) at ``encoder_learning_rate``; tokens and matcher at ``learning_rate``."""
        settings: LMKESettings = self.settings  # type: ignore[assignment]
        encoders = {id(p): p for part in (self.model.query_encoder, self.model.key_encoder) for p in part.parameters() if p.requires_grad}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in encoders]
        return [{"params": list(encoders.values()), "lr": settings.encoder_learning_rate}, {"params": rest, "lr": settings.learning_rate}]

    # -- sequences -----------------------------------------------------------------------
    def query_sequences(self, given: list[int], relation_tokens: list[int]) -> list[Sequence]:
        """``[CLS] [e] e-text [r] r-text [MASK] [SEP]``; the longer text is cut first to fit ``max_length``."""
        cls, sep, mask, _ = self.special
        budget = self.settings.max_length - 5
        sequences = []
        for entity, relation in zip(given, relation_tokens):
            first, second = self.entity_tokens[entity], self.relation_tokens[relation]
            keep_first = min(len(first), max(budget - len(second), budget // 2))
            keep_second = min(len(second), budget - keep_first)
            ids = [cls, mask, *first[:keep_first], mask, *second[:keep_second], mask, sep]  # the first two [MASK]s are overwritten
            sequences.append(Sequence(ids, (1, 2 + keep_first), 3 + keep_first + keep_second))
        return sequences

    def key_sequences(self, entities: list[int]) -> list[Sequence]:
        """``[CLS] [e] e-text [SEP]``, read at ``[e]``."""
        cls, sep, mask, _ = self.special
        return [Sequence([cls, mask, *self.entity_tokens[e][: self.settings.max_length - 3], sep], (1,), 1) for e in entities]

    def _encode(self, encoder: nn.Module, sequences: list[Sequence], tokens: list[torch.Tensor]) -> torch.Tensor:
        """Outputs ``[s, d]`` at each sequence's read position; ``tokens[j]`` ``[s, d]`` overwrite slot j."""
        pad = self.special[3]
        if encoder.training:
            self.trained_sequences += len(sequences)
        words = self.model.query_encoder.get_input_embeddings()

        def inputs(chunk: list[int]) -> tuple[torch.Tensor, ...]:
            token_rows = [sequences[i].ids for i in chunk]
            ids, attention = padded(token_rows, pad, self.device), attention_mask(token_rows, self.device)
            rows = torch.arange(len(chunk), device=self.device)
            chosen = torch.tensor(chunk, device=self.device)
            embeds = words(ids)
            for slot, vectors in enumerate(tokens):
                embeds = embeds.index_put((rows, torch.tensor([sequences[i].slots[slot] for i in chunk], device=self.device)), vectors[chosen])
            return embeds, attention, torch.tensor([sequences[i].read for i in chunk], device=self.device)

        def read_positions(embeds: torch.Tensor, attention: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
            hidden = encoder(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), read]

        return encode_in_passes([len(sequence.ids) for sequence in sequences], self.settings.eval_batch_size, inputs, read_positions)

    def _queries(self, given: torch.Tensor, relation_tokens: torch.Tensor) -> torch.Tensor:
        """Query vectors ``[q, d]`` of entity ids and relation token ids (``r`` forward, ``m + r`` inverse)."""
        sequences = self.query_sequences(given.tolist(), relation_tokens.tolist())
        return self._encode(self.model.query_encoder, sequences, [self.model.entity(given), self.model.relation(relation_tokens)])

    def _encode_keys(self, entities: torch.Tensor) -> torch.Tensor:
        return self._encode(self.model.key_encoder, self.key_sequences(entities.tolist()), [self.model.entity(entities)])

    def _cached(self) -> bool:
        """Keys are cached for scoring outside training: eval mode, no gradients."""
        return not self.model.training and not torch.is_grad_enabled()

    def _all_keys(self) -> torch.Tensor:
        """Every entity's key ``[n, d]``; outside training, encoded once per ``updates``."""
        if not self._cached():
            return self._encode_keys(torch.arange(self.num_entities, device=self.device))
        if self._keys is None or self._keys[0] != self.updates:
            self._keys = (self.updates, self._encode_keys(torch.arange(self.num_entities, device=self.device)))
        return self._keys[1]

    def _keys_of(self, entities: torch.Tensor) -> torch.Tensor:
        """Keys of an id tensor of any shape, each distinct entity encoded once."""
        if self._cached():
            return self._all_keys()[entities]
        distinct, inverse = torch.unique(entities, return_inverse=True)
        return self._encode_keys(distinct)[inverse]

    # -- scoring -------------------------------------------------------------------------
    def _pair_logits(self, queries: torch.Tensor, query_degree: torch.Tensor, keys: torch.Tensor, key_degree: torch.Tensor) -> torch.Tensor:
        """Matcher logits ``[q, c]`` of ``[q, 1|c, d]`` queries and ``[1|q, c|1, d]`` keys (log-degrees alike), ``slice_pairs`` pairs at a time."""
        matcher = self.model.matcher
        query_part, key_part = matcher.query_part(queries, query_degree), matcher.key_part(keys, key_degree)
        step = max(1, self.slice_pairs // max(queries.shape[1], keys.shape[1]))

        def rows(tensor: torch.Tensor, start: int) -> torch.Tensor:
            return tensor if tensor.shape[0] == 1 else tensor[start : start + step]

        return torch.cat(
            [matcher(rows(queries, s), rows(query_part, s), rows(keys, s), rows(key_part, s)) for s in range(0, queries.shape[0], step)]
        )

    def _entity_queries(self, kind: QueryKind, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query vectors ``[q, d]`` and the given entities of tail (h, r) or head (r, t) queries."""
        given, relation_tokens = reciprocal_tail_query(kind, queries, self.num_relations)
        return self._queries(given, relation_tokens), given

    def _entity_logits(self, vectors: torch.Tensor, given: torch.Tensor, candidates: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        """Logits ``[q, c]`` of query vectors given ``keys``: every entity's ``[n, d]`` (candidates ``None``) or the candidates' ``[q, c, d]``."""
        log_degree = self.model.log_degree
        keys, key_degree = (keys[None], log_degree[None]) if candidates is None else (keys, log_degree[candidates])
        return self._pair_logits(vectors[:, None], log_degree[given][:, None], keys, key_degree)

    def score(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        queries = queries.to(self.device)
        candidates = None if candidates is None else candidates.to(self.device)
        if kind != QueryKind.RELATION:
            keys = self._all_keys() if candidates is None else self._keys_of(candidates)
            return self._entity_logits(*self._entity_queries(kind, queries), candidates, keys)
        if candidates is None:
            candidates = torch.arange(self.num_relations, device=self.device).expand(queries.shape[0], -1)
        heads, tails = queries.unbind(dim=1)
        vectors = self._queries(heads[:, None].expand_as(candidates).reshape(-1), candidates.reshape(-1)).view(*candidates.shape, -1)
        log_degree = self.model.log_degree
        return self._pair_logits(vectors, log_degree[heads][:, None], self._keys_of(tails)[:, None], log_degree[tails][:, None])

    def top_candidates(self, kind: QueryKind, queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
        """faiss shortlist of ``shortlist_factor * k`` by the matcher's linear part (:meth:`Matcher.retrieval_keys`), reranked by the matcher."""
        if kind == QueryKind.RELATION:
            return super().top_candidates(kind, queries, pool, k)
        settings: LMKESettings = self.settings  # type: ignore[assignment]
        k = min(k, pool.numel())
        with torch.no_grad():
            vectors, given = self._entity_queries(kind, queries.to(self.device))
            keys = torch.cat([self._all_keys(), self.model.log_degree[:, None]], dim=1)
            size = min(pool.numel(), settings.shortlist_factor * k)
            shortlist = self._index.search(keys, pool, self.model.matcher.retrieval_keys, self.model.matcher.retrieval_queries(vectors), size, version=self.updates)
            listed = shortlist.to(self.device)
            best = self._entity_logits(vectors, given, listed, self._keys_of(listed)).topk(k, dim=1).indices
            return shortlist.gather(1, best.to(shortlist.device))  # ids on the pool's device, as the caller holds them

    # -- training ------------------------------------------------------------------------
    def _positives(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``[q, c]``: which candidates (distinct ids) are train answers of each query."""
        rows, answers = self.train_answers.pairs(kind, queries.cpu())
        column = torch.full((self.num_entities,), -1, dtype=torch.long)
        column[candidates.cpu()] = torch.arange(candidates.numel())
        known = column[answers] >= 0
        positive = torch.zeros(queries.shape[0], candidates.numel(), dtype=torch.bool)
        positive[rows[known], column[answers[known]]] = True
        return positive.to(self.device)

    def _encode_step(self, batch: torch.Tensor, requests: list[tuple[QueryKind, torch.Tensor, torch.Tensor | None]]) -> StepEncodings:
        """The queries of the batch (both directions) and of entity ``requests``, and the keys of the batch's
        entities and of the requests' candidates (every entity where one has none), each distinct one encoded once."""
        heads, relations, tails = batch.unbind(dim=1)
        asked = [reciprocal_tail_query(kind, queries, self.num_relations) for kind, queries, _ in requests]
        # (h, r) asks for tails, (t, r^-1) for heads
        given = torch.cat([heads, tails, *(entities for entities, _ in asked)])
        tokens = torch.cat([relations, relations + self.num_relations, *(relation_tokens for _, relation_tokens in asked)])
        pairs, inverse = torch.unique(torch.stack([given, tokens], dim=1), dim=0, return_inverse=True)
        vectors = self._queries(pairs[:, 0], pairs[:, 1])[inverse]
        if any(candidates is None for _, _, candidates in requests):
            entities = torch.arange(self.num_entities, device=self.device)
        else:
            entities = torch.unique(torch.cat([heads, tails, *(candidates.reshape(-1) for _, _, candidates in requests)]))
        return StepEncodings(vectors, given, entities, self._encode_keys(entities))

    def contrastive_logits(self, batch: torch.Tensor, encoded: StepEncodings | None = None) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
        """``(kind's logits [b, c], positives [b, c], candidate ids [c])`` for the batch's tail and head
        queries, and the batch's ``(entities, keys)`` for the memory bank.

        A query's candidates are the distinct targets of the batch (fresh keys), with ``self_negatives``
        the batch's given entities too, then the memory bank's entities not among them (newest first);
        its own target is always a positive, and any other train answer among them too.
        """
        batch = batch.to(self.device)
        if encoded is None:
            encoded = self._encode_step(batch, [])
        heads, relations, tails = batch.unbind(dim=1)
        size = batch.shape[0]
        tail_queries, head_queries = encoded.queries[:size], encoded.queries[size : 2 * size]
        head_keys, tail_keys = encoded.keys_of(heads), encoded.keys_of(tails)
        bank = self._bank_entries()[::-1]
        log_degree = self.model.log_degree
        results = []
        for kind, queries, vectors, given, targets, target_keys in (
            (QueryKind.TAIL, torch.stack([heads, relations], 1), tail_queries, heads, tails, tail_keys),
            (QueryKind.HEAD, torch.stack([relations, tails], 1), head_queries, tails, heads, head_keys),
        ):
            given_ids, given_keys = (given, head_keys if kind == QueryKind.TAIL else tail_keys) if self.settings.self_negatives else (targets[:0], target_keys[:0])  # type: ignore[attr-defined]
            ids = torch.cat([targets, given_ids, *(stored for _, stored, _ in bank)])
            candidate_keys = torch.cat([target_keys, given_keys, *(stored for _, _, stored in bank)])
            keep = first_occurrences(ids)
            ids, candidate_keys = ids[keep], candidate_keys[keep]
            logits = self._pair_logits(vectors[:, None], log_degree[given][:, None], candidate_keys[None], log_degree[ids][None])
            positive = self._positives(kind, queries, ids) | (ids[None] == targets[:, None])
            results.append((logits, positive, ids))
        entities = torch.unique(torch.cat([heads, tails]))
        return results, (entities, encoded.keys_of(entities))

    def _bank_entries(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """The memory bank's entries of the last ``memory_bank`` steps before this one (``updates``), oldest first."""
        size = self.settings.memory_bank  # type: ignore[attr-defined]
        return [entry for entry in self._bank if entry[0] < self.updates][-size:] if size else []

    def train_loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.train_scores(batch, [])[0]

    def train_scores(self, batch: torch.Tensor, requests: list[tuple[QueryKind, torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean of :func:`contrastive_bce` over the batch's tail and head queries, and the requested scores,
        from one encoding of each distinct query and key of the step (relation requests are scored apart).

        A student pulls labels for the queries of its own batches, on candidates that overlap from query
        to query: encoded apart, a KD step cost about four own steps. The batch's keys go to the memory
        bank, keyed by ``updates``: a second loss at the same step replaces its entry, so it sees the same bank.
        """
        batch = batch.to(self.device)
        listed = [(kind, queries.to(self.device), None if candidates is None else candidates.to(self.device)) for kind, queries, candidates in requests if kind != QueryKind.RELATION]
        encoded = self._encode_step(batch, listed)
        results, (entities, keys) = self.contrastive_logits(batch, encoded)
        if self.settings.memory_bank:  # type: ignore[attr-defined]
            self._bank = [*self._bank_entries(), (self.updates, entities, keys.detach())]
        loss = sum(contrastive_bce(logits, positive) for logits, positive, _ in results) / len(results)
        start = 2 * batch.shape[0]
        entity_scores = []
        for _, queries, candidates in listed:
            rows = slice(start, start + queries.shape[0])
            start = rows.stop
            entity_scores.append(self._entity_logits(encoded.queries[rows], encoded.given[rows], candidates, encoded.keys if candidates is None else encoded.keys_of(candidates)))
        entity_scores = iter(entity_scores)
        return loss, [self.score(*request) if request[0] == QueryKind.RELATION else next(entity_scores) for request in requests]

    # -- export --------------------------------------------------------------------------
    def embeddings(self) -> dict[str, np.ndarray]:
        """Entity keys ``[n, d]`` (eval mode) and the forward relation tokens ``[m, d]``."""
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                keys = self._all_keys()
        finally:
            self.model.train(training)
        return {
            "entity": keys.float().cpu().numpy().astype(np.float32),
            "relation": self.model.relation.weight[: self.num_relations].detach().float().cpu().numpy().astype(np.float32),
        }
