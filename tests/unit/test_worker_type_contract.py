"""The worker-type contract, run over every registered worker type (PyKEEN's meta-test shape).

A new worker type gets a :data:`CASES` entry (settings that build it on a tiny KB, and the KB it
needs); without one, :func:`test_every_registered_worker_type_has_a_contract_case` fails.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from kdmkb.kb_worker.data import EntityTexts, Features, RelationTexts
from kdmkb.kb_worker.ranking import KnownAnswers, evaluate_ranking
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind, WorkerType
from kdmkb.services.errors import PreconditionError

NUM_ENTITIES, NUM_RELATIONS = 9, 3


def _kb(make_kb, *, features: bool = False, texts: bool = False):
    rng = np.random.default_rng(0)
    triples = np.unique(np.stack([rng.integers(0, NUM_ENTITIES, 60), rng.integers(0, NUM_RELATIONS, 60), rng.integers(0, NUM_ENTITIES, 60)], 1), axis=0)
    kb = make_kb(NUM_ENTITIES, NUM_RELATIONS, train=triples[:-6], valid=triples[-6:-3], test=triples[-3:])
    if texts:
        present = np.ones(NUM_ENTITIES, dtype=bool)
        present[-1] = False  # one entity without text
        names = tuple(f"entity {i}" if i < NUM_ENTITIES - 1 else "" for i in range(NUM_ENTITIES))
        descriptions = tuple(f"the {i}th thing of the toy kb" if i < NUM_ENTITIES - 1 else "" for i in range(NUM_ENTITIES))
        relation_text = RelationTexts(tuple(f"relation {r}" for r in range(NUM_RELATIONS)), np.ones(NUM_RELATIONS, dtype=bool))
        kb = dataclasses.replace(kb, entity_text=EntityTexts(names, descriptions, present), relation_text=relation_text)
    if features:
        values = rng.standard_normal((NUM_ENTITIES, 5)).astype(np.float32)
        present = np.ones(NUM_ENTITIES, dtype=bool)
        present[-1] = False
        values[-1] = 0.0
        kb = dataclasses.replace(kb, features={"numeric": Features(values, present)})
    return kb


# A settings value that the tiny random BERT's folder (conftest's tiny_encoder) replaces.
TINY_ENCODER = "<tiny encoder>"

# name -> (settings on the tiny KB, what the KB folder must carry besides triples: "features", "texts")
CASES: dict[str, tuple[dict, frozenset[str]]] = {
    "transe": ({"dim": 8}, frozenset()),
    "distmult": ({"dim": 8}, frozenset()),
    "complex": ({"dim": 4}, frozenset()),
    "rotate": ({"dim": 4}, frozenset()),
    "reciprocal-distmult": ({"dim": 8}, frozenset()),
    "kd-rel-distmult": ({"dim": 16}, frozenset()),
    "kd-distmult": ({"dim": 16}, frozenset()),
    "feature-mlp": ({"features": "numeric", "hidden": 8, "dim": 4}, frozenset({"features"})),
    "feature-complex": ({"features": "numeric", "rank": 4, "n3": 0.01, "init_scale": 0.3}, frozenset({"features"})),
    "lmke": ({"encoder": TINY_ENCODER, "max_length": 32, "hidden": 16, "device": "cpu", "memory_bank": 2}, frozenset({"texts"})),
    "mtl-kgc": ({"encoder": TINY_ENCODER, "max_length": 32, "device": "cpu", "rerank_k": NUM_ENTITIES, "retriever_settings": {"dim": 4}}, frozenset({"texts"})),
}


def test_every_registered_worker_type_has_a_contract_case():
    assert set(CASES) == set(WORKER_TYPES.names()), "add a CASES entry for every registered worker type (and drop those of removed ones)"


@pytest.fixture(params=sorted(CASES))
def worker(request, make_kb) -> WorkerType:
    settings, carries = CASES[request.param]
    settings = {key: request.getfixturevalue("tiny_encoder") if value == TINY_ENCODER else value for key, value in settings.items()}
    cls = WORKER_TYPES.get(request.param)
    torch.manual_seed(0)
    built = cls(_kb(make_kb, features="features" in carries, texts="texts" in carries), cls.validate_settings(settings))
    built.name = request.param
    return built


def _queries(kind: QueryKind) -> torch.Tensor:
    if kind == QueryKind.RELATION:
        return torch.tensor([(h, t) for h in range(NUM_ENTITIES) for t in range(0, NUM_ENTITIES, 2)])
    pairs = torch.tensor([(e, r) for e in range(NUM_ENTITIES) for r in range(NUM_RELATIONS)])
    return pairs if kind == QueryKind.TAIL else pairs[:, [1, 0]]


def _width(kind: QueryKind) -> int:
    return NUM_RELATIONS if kind == QueryKind.RELATION else NUM_ENTITIES


@pytest.mark.parametrize("kind", list(QueryKind))
def test_scoring_every_entity_equals_scoring_them_as_candidates(worker, kind):
    """``score(kind, queries)`` is ``score(kind, queries, every id)``, in eval mode, and finite."""
    worker.modules().eval()
    queries = _queries(kind)
    everyone = torch.arange(_width(kind)).expand(queries.shape[0], -1)
    with torch.no_grad():
        whole = worker.score(kind, queries)
        given = worker.score(kind, queries, everyone)
        one_by_one = torch.cat([worker.score(kind, queries[i : i + 1], everyone[:1]) for i in range(queries.shape[0])])
    assert whole.shape == given.shape == (queries.shape[0], _width(kind))
    assert torch.isfinite(whole).all()
    torch.testing.assert_close(whole, given, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_by_one, given, atol=1e-5, rtol=1e-5)  # eval mode: no dependence on the batch


@pytest.mark.parametrize("kind", list(QueryKind))
def test_sliced_scores_equal_scores_in_one_call(worker, kind, monkeypatch):
    worker.modules().eval()
    queries = _queries(kind)
    candidates = torch.randint(_width(kind), (queries.shape[0], 4))
    with torch.no_grad():
        expected = worker.score(kind, queries, candidates), worker.score(kind, queries)
    monkeypatch.setattr(type(worker), "slice_pairs", 5)  # several queries per slice, and a slice smaller than one row
    torch.testing.assert_close(worker.score_sliced(kind, queries, candidates), expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(worker.score_sliced(kind, queries), expected[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", [QueryKind.TAIL, QueryKind.HEAD])
def test_a_shared_candidate_list_scores_as_a_copy_per_query(worker, kind, monkeypatch):
    """One list expanded for every query (a teacher's full answer) is scored as if each query had its own copy."""
    worker.modules().eval()
    queries = _queries(kind)
    pool = torch.tensor([5, 0, 3, 3, 8])
    with torch.no_grad():
        expected = worker.score(kind, queries, pool.repeat(queries.shape[0], 1))
    monkeypatch.setattr(type(worker), "slice_pairs", 5)
    monkeypatch.setattr(type(worker), "shared_slice_pairs", 12)  # two queries a slice, a short last slice
    torch.testing.assert_close(worker.score_sliced(kind, queries, pool.expand(queries.shape[0], -1)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", [QueryKind.TAIL, QueryKind.HEAD])
def test_top_candidates_are_the_best_of_the_pool(worker, kind):
    worker.modules().eval()
    queries = _queries(kind)
    pool = torch.tensor([0, 2, 3, 5, 8])
    top = worker.top_candidates(kind, queries, pool, 3)
    assert top.shape == (queries.shape[0], 3) and bool(torch.isin(top, pool).all())
    scores = worker.score_sliced(kind, queries, pool.expand(queries.shape[0], -1))
    best = scores.topk(3, dim=1).values
    got = worker.score_sliced(kind, queries, top).sort(dim=1, descending=True).values
    torch.testing.assert_close(got, best, atol=1e-4, rtol=1e-4)
    assert worker.top_candidates(kind, queries, pool, 50).shape == (queries.shape[0], pool.numel())  # k beyond the pool


def test_training_moves_the_parameters_and_refreshes_search(worker):
    batch = torch.from_numpy(worker.kb.train[:16])
    optimizer = worker.optimizer()
    assert optimizer.param_groups and all(group["params"] for group in optimizer.param_groups)
    queries = _queries(QueryKind.TAIL)
    pool = torch.arange(NUM_ENTITIES)
    worker.modules().eval()
    worker.top_candidates(QueryKind.TAIL, queries, pool, 3)  # builds any cached search structure
    worker.modules().train()
    before = {key: value.clone() for key, value in worker.modules().state_dict().items()}
    for _ in range(3):
        loss = worker.train_loss(batch)
        assert loss.ndim == 0 and math.isfinite(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        worker.updates += 1
    after = worker.modules().state_dict()
    assert any(not torch.equal(before[key], after[key]) for key in before if after[key].is_floating_point())
    worker.modules().eval()
    # after updates, the top candidates follow the new weights (a stale index would not)
    top = worker.top_candidates(QueryKind.TAIL, queries, pool, 3)
    got = worker.score_sliced(QueryKind.TAIL, queries, top).sort(dim=1, descending=True).values
    best = worker.score_sliced(QueryKind.TAIL, queries).topk(3, dim=1).values
    torch.testing.assert_close(got, best, atol=1e-4, rtol=1e-4)


def test_train_scores_equal_the_own_loss_and_separate_scores(worker):
    """A student's step may share work between its own loss and the KD scores: same values, same gradients.

    In eval mode: a type that shares an encoding draws one dropout mask where separate calls draw one each.
    """
    worker.modules().eval()
    batch = torch.from_numpy(worker.kb.train[:8])
    generator = torch.Generator().manual_seed(1)
    kinds = ((QueryKind.TAIL, (0, 1)), (QueryKind.HEAD, (1, 2)), (QueryKind.RELATION, (0, 2)))
    requests = [(kind, batch[:, list(columns)], torch.randint(_width(kind), (8, 3), generator=generator)) for kind, columns in kinds]
    requests += [(kind, batch[:, list(columns)], None) for kind, columns in kinds]  # every candidate, as a student asks for a tail bucket
    weights = [torch.rand(8, 3 if candidates is not None else _width(kind), generator=generator) for kind, _, candidates in requests]
    state = {key: value.clone() for key, value in worker.modules().state_dict().items()}

    def run(shared: bool):
        worker.modules().load_state_dict(state)
        worker.modules().zero_grad(set_to_none=True)
        torch.manual_seed(3)  # the own loss samples its negatives
        if shared:
            own, scores = worker.train_scores(batch, requests)
        else:
            own, scores = worker.train_loss(batch), [worker.score(*request) for request in requests]
        (own + sum((w * s).sum() for w, s in zip(weights, scores))).backward()
        return [own, *scores, *(p.grad for p in worker.modules().parameters())]

    for expected, got in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_training_resumes_exactly_from_what_a_checkpoint_keeps(worker):
    """Modules, optimiser, ``training_state`` and the random generator let a new worker go on exactly as the old one (a resumed job)."""
    batch = torch.from_numpy(worker.kb.train[:8])

    def steps(model: WorkerType, optimizer) -> None:
        for _ in range(2):
            loss = model.train_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.updates += 1

    optimizer = worker.optimizer()
    steps(worker, optimizer)
    saved = copy.deepcopy((worker.modules().state_dict(), optimizer.state_dict(), worker.training_state(), torch.get_rng_state(), worker.updates))
    steps(worker, optimizer)
    torch.manual_seed(11)
    resumed = type(worker)(worker.kb, worker.settings)
    resumed.modules().load_state_dict(saved[0])
    resumed_optimizer = resumed.optimizer()
    resumed_optimizer.load_state_dict(saved[1])
    resumed.load_training_state(saved[2])
    torch.set_rng_state(saved[3])
    resumed.updates = saved[4]
    steps(resumed, resumed_optimizer)
    expected = worker.modules().state_dict()
    for key, value in resumed.modules().state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_state_dict_round_trip_restores_every_score(worker):
    worker.modules().eval()
    cls = type(worker)
    torch.manual_seed(7)
    other = cls(worker.kb, worker.settings)
    other.modules().load_state_dict(worker.modules().state_dict())
    other.modules().eval()
    for kind in QueryKind:
        torch.testing.assert_close(other.score(kind, _queries(kind)), worker.score(kind, _queries(kind)))


def test_embeddings_are_optional_and_shaped(worker):
    if type(worker).embeddings is WorkerType.embeddings:
        with pytest.raises(PreconditionError, match="no embeddings"):
            worker.embeddings()
        return
    exported = worker.embeddings()
    assert exported["entity"].shape[0] == NUM_ENTITIES and exported["relation"].shape[0] == NUM_RELATIONS
    assert exported["entity"].dtype == np.float32 and exported["relation"].dtype == np.float32


def test_ranking_is_exact_or_a_named_rerank(worker):
    worker.modules().eval()
    ranking = worker.ranking()
    kb = worker.kb
    known = KnownAnswers(kb.known_triples(), NUM_ENTITIES, NUM_RELATIONS)
    result = evaluate_ranking(worker.score, kb.test, known, batch_size=2, ranking=ranking)
    assert result.ranking == ranking.label
    assert (result.retriever_recall is None) == (ranking.retriever is None)
    assert result.num_queries == 2 * len(kb.test) and 0 < result.mrr <= 1 and 1 <= result.mr <= NUM_ENTITIES


def test_declared_scale_and_slices_are_positive(worker):
    assert type(worker).logit_scale > 0 and type(worker).slice_pairs > 0
    assert worker.device == torch.device("cpu")
    assert worker.num_parameters() == sum(p.numel() for p in worker.modules().parameters() if p.requires_grad) > 0


def test_unknown_settings_are_refused_by_name(worker):
    with pytest.raises(Exception, match="no_such_setting"):
        type(worker).validate_settings({"no_such_setting": 1})
