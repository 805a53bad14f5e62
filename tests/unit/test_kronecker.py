"""Reciprocal DistMult-family worker types (kd-rel-distmult, kd-distmult, reciprocal-distmult): scores against torch.kron, the contract, training.

``COVERED_WORKER_TYPES`` is read by ``test_registry``: every registered worker type must be
covered by the score tests here or in test_scoring.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pydantic
import pytest
import torch

from kdmkb.kb_worker.data import load_kb
from kdmkb.kb_worker.ranking import KnownAnswers, evaluate_ranking
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind
from kdmkb.kb_worker.worker_types.kronecker import KroneckerSettings, ReciprocalWorker, relaxation_loss
from kdmkb.services.config import validate
from kdmkb.services.errors import ConfigError

TAIL, HEAD, RELATION = QueryKind.TAIL, QueryKind.HEAD, QueryKind.RELATION
KRONECKER = ("kd-rel-distmult", "kd-distmult")
MODELS = (*KRONECKER, "reciprocal-distmult")
COVERED_WORKER_TYPES = frozenset(MODELS)
REGIMES = ("1vsAll", "KvsAll", "negative-sampling")
UMLS = Path(__file__).parents[2] / "services" / "datasets" / "umls"
NUM_ENTITIES, NUM_RELATIONS = 7, 3


# -- naive references: the paper's formulas with torch.kron, one triple at a time -------------------
def naive_score(name: str, h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> float:
    if name == "reciprocal-distmult":  # plain DistMult: h o r . t
        return float((h * r) @ t)
    if name == "kd-rel-distmult":  # eq. 8: h o (r (x) r) . t
        return float((h * torch.kron(r, r)) @ t)
    # eq. 9: sum_i R((h (x) h) o (r (x) r))_i . t, R reshaping the d^2 vector into d x d
    k = h.numel()
    matrix = (torch.kron(h, h) * torch.kron(r, r)).reshape(k, k)
    return float((matrix @ t).sum())


def build(name: str, kb, **settings) -> ReciprocalWorker:
    cls = WORKER_TYPES.get(name)
    return cls(kb, cls.validate_settings({"dim": 9, **settings}))


def random_kb(make_kb, num_entities=NUM_ENTITIES, num_relations=NUM_RELATIONS, triples=60, seed=0):
    generator = torch.Generator().manual_seed(seed)
    train = torch.stack(
        [torch.randint(num_entities, (triples,), generator=generator), torch.randint(num_relations, (triples,), generator=generator), torch.randint(num_entities, (triples,), generator=generator)],
        dim=1,
    )
    return make_kb(num_entities, num_relations, train=train.numpy())


def trained(worker: ReciprocalWorker, steps: int = 5) -> ReciprocalWorker:
    """A few steps of training so that batch-norm's running statistics and affine are not the identity."""
    optimizer = torch.optim.Adam(worker.modules().parameters(), lr=0.05)
    train = torch.from_numpy(worker.kb.train)
    for _ in range(steps):
        optimizer.zero_grad()
        worker.train_loss(train).backward()
        optimizer.step()
    norm = worker.modules().norm
    assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
    assert not torch.allclose(norm.weight, torch.ones_like(norm.weight))
    return worker


@pytest.fixture(params=MODELS)
def name(request):
    return request.param


# -- the decomposition ------------------------------------------------------------------------------
def test_reconstruction_matches_torch_kron(name, make_kb):
    worker = build(name, make_kb(NUM_ENTITIES, NUM_RELATIONS), dim=16)
    model = worker.modules()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.entity.weight.copy_(torch.randn(model.entity.weight.shape, generator=generator))
        model.relation.weight.copy_(torch.randn(model.relation.weight.shape, generator=generator))
    E, R = model.entity.weight.detach(), model.relation.weight.detach()
    assert R.shape == (2 * NUM_RELATIONS, 16 if name == "reciprocal-distmult" else 4)
    assert E.shape == (NUM_ENTITIES, 4 if name == "kd-distmult" else 16)
    model.eval()  # fresh batch-norm in eval mode is x / sqrt(1 + eps)
    scale = 1 / math.sqrt(1 + model.norm.eps)
    triples = [(h, r, t) for h in range(NUM_ENTITIES) for r in range(2 * NUM_RELATIONS) for t in range(NUM_ENTITIES)]
    expected = torch.tensor([naive_score(name, E[h], R[r], E[t]) * scale for h, r, t in triples])
    ids = torch.tensor(triples)
    with torch.no_grad():
        reconstructed = (model.reconstruct(E[ids[:, 0]], R[ids[:, 1]]) * E[ids[:, 2]]).sum(-1) * scale
        got = worker.score(TAIL, ids[:, :2], ids[:, 2:])[:, 0]
    torch.testing.assert_close(reconstructed, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_hand_computed_kd_distmult_score(make_kb):
    """Paper eq. 7 with k = 2: h=(a,b), r=(c,d), t=(e,f): aacce + 2abcdef + bbddff (here summed over rows)."""
    worker = build("kd-distmult", make_kb(2, 1), dim=4)
    model = worker.modules()
    with torch.no_grad():
        model.entity.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        model.relation.weight.copy_(torch.tensor([[0.5, 1.0], [0.0, 0.0]]))
    model.eval()
    a, b, c, d, e, f = 1.0, 2.0, 0.5, 1.0, 3.0, -1.0
    # u = (ac, bd) = (.5, 2); sum(u) u . t = 2.5 * (1.5 - 2) = -1.25
    expected = (a * a * c * c * e + a * b * c * d * (e + f) + b * b * d * d * f) / math.sqrt(1 + model.norm.eps)
    assert expected == pytest.approx(-1.25 / math.sqrt(1 + model.norm.eps))
    with torch.no_grad():
        got = worker.score(TAIL, torch.tensor([[0, 0]]), torch.tensor([[1]]))
    assert got.item() == pytest.approx(expected, rel=1e-5)


# -- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KRONECKER)
@pytest.mark.parametrize("dim", [2, 8, 10, 99])
def test_dim_must_be_a_perfect_square(name, dim):
    cls = WORKER_TYPES.get(name)
    with pytest.raises(ConfigError, match=r"settings\.dim: .*perfect square"):
        validate(cls.settings_model, {"dim": dim}, prefix="settings")
    with pytest.raises(pydantic.ValidationError, match="dim"):
        cls.validate_settings({"dim": dim})
    assert cls.validate_settings({"dim": 1}).dim == 1
    assert cls.validate_settings({"dim": 289}).dim == 289
    assert WORKER_TYPES.get("reciprocal-distmult").validate_settings({"dim": dim}).dim == dim  # no factors to split


def test_validation_names_the_model_field():
    with pytest.raises(ConfigError, match=r"settings\.regime"):
        validate(WORKER_TYPES.get("reciprocal-distmult").settings_model, {"regime": "2vsAll"}, prefix="settings")


def test_settings_are_strict_and_described():
    for field_name, field in KroneckerSettings.model_fields.items():
        assert field.description, field_name
    with pytest.raises(pydantic.ValidationError, match="margin"):
        KroneckerSettings.model_validate({"margin": 1.0})
    with pytest.raises(pydantic.ValidationError, match="regime"):
        KroneckerSettings.model_validate({"regime": "2vsAll"})
    with pytest.raises(ConfigError, match="at most one"):
        validate(KroneckerSettings, {"label_smoothing": 0.1, "label_relaxation": 0.1}, prefix="settings")
    with pytest.raises(ConfigError, match="1vsAll and KvsAll"):
        validate(KroneckerSettings, {"regime": "negative-sampling", "label_smoothing": 0.1}, prefix="settings")


# -- the contract -----------------------------------------------------------------------------------
def test_head_queries_are_reciprocal_tail_queries(name, make_kb):
    worker = trained(build(name, random_kb(make_kb)))
    worker.modules().eval()
    triples = torch.tensor([(h, r, t) for h in range(NUM_ENTITIES) for r in range(NUM_RELATIONS) for t in range(NUM_ENTITIES)])
    h, r, t = triples.unbind(dim=1)
    with torch.no_grad():
        as_head = worker.score(HEAD, torch.stack([r, t], 1), h[:, None])[:, 0]
        as_inverse_tail = worker.score(TAIL, torch.stack([t, r + NUM_RELATIONS], 1), h[:, None])[:, 0]
        as_tail = worker.score(TAIL, torch.stack([h, r], 1), t[:, None])[:, 0]
        as_relation = worker.score(RELATION, torch.stack([h, t], 1), r[:, None])[:, 0]
    torch.testing.assert_close(as_head, as_inverse_tail, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(as_relation, as_tail, atol=1e-5, rtol=1e-5)  # relation queries use the forward form
    assert not torch.allclose(as_head, as_tail, atol=1e-3)  # the inverse relation is a vector of its own


def test_score_candidates_is_differentiable_in_train_mode(name, make_kb):
    worker = trained(build(name, random_kb(make_kb)))
    model = worker.modules()
    model.train()
    running = model.norm.running_mean.clone(), model.norm.running_var.clone()
    for kind, queries, candidates in (
        (TAIL, torch.tensor([[0, 1], [2, 0]]), torch.tensor([[2, 3], [4, 5]])),
        (HEAD, torch.tensor([[1, 0]]), torch.tensor([[2, 3]])),  # a one-row batch uses the running statistics
        (RELATION, torch.tensor([[0, 3]]), torch.tensor([[0, 2]])),
    ):
        model.zero_grad()
        (worker.score(kind, queries, candidates) * torch.tensor([1.0, 2.5])).sum().backward()
        assert model.entity.weight.grad.abs().sum() > 0 and model.relation.weight.grad.abs().sum() > 0, kind
        assert model.norm.weight.grad.abs().sum() > 0, kind
        assert model.entity.weight.grad[6].abs().sum() == 0  # untouched entities get no gradient
    # distillation batches do not move the statistics that ranking uses
    assert torch.equal(model.norm.running_mean, running[0]) and torch.equal(model.norm.running_var, running[1])


def brute_force_top(worker, kind, queries, pool, k):
    with torch.no_grad():
        scores = worker.score(kind, queries, pool.expand(queries.shape[0], -1))
    order = scores.argsort(dim=1, descending=True)
    if k < pool.numel():  # no tie at the cut: the expected set is unambiguous
        cut = scores.gather(1, order[:, k - 1 : k + 1])
        assert (cut[:, 0] - cut[:, 1]).min() > 1e-5
    return pool[order[:, :k]]


@pytest.mark.parametrize("k", [1, 4, 17, 25])
def test_faiss_top_candidates_match_brute_force(name, k, make_kb):
    num_entities = 40
    worker = trained(build(name, random_kb(make_kb, num_entities=num_entities, triples=200), dim=16))
    worker.modules().eval()
    generator = torch.Generator().manual_seed(7)
    pool = torch.randperm(num_entities, generator=generator)[:17]
    entities = torch.randint(num_entities, (6,), generator=generator)
    relations = torch.randint(NUM_RELATIONS, (6,), generator=generator)
    for kind, queries in ((TAIL, torch.stack([entities, relations], 1)), (HEAD, torch.stack([relations, entities], 1))):
        got = worker.top_candidates(kind, queries, pool, k)
        expected = brute_force_top(worker, kind, queries, pool, min(k, pool.numel()))
        assert got.shape == expected.shape
        assert torch.equal(got, expected), kind  # same set, best first
    # the cached index follows weight updates
    queries = torch.stack([entities, relations], 1)
    before = worker.top_candidates(TAIL, queries, pool, 3)
    optimizer = torch.optim.SGD(worker.modules().parameters(), lr=5.0)
    worker.score(TAIL, queries, pool.expand(6, -1)).sum().neg().backward()
    optimizer.step()
    worker.updates += 1  # the explicit rule: the index is rebuilt once the model counts an update
    after = worker.top_candidates(TAIL, queries, pool, 3)
    assert torch.equal(after, brute_force_top(worker, TAIL, queries, pool, 3)) and not torch.equal(after, before)


def test_parameter_count_by_hand(make_kb):
    kb = make_kb(5, 3)
    # dim 4, k 2. kd-distmult: 5 entities x 2 + 6 relations (with inverses) x 2 + batch-norm of 2 (weight, bias)
    assert build("kd-distmult", kb, dim=4).num_parameters() == 5 * 2 + 6 * 2 + 2 * 2 == 26
    # kd-rel-distmult: 5 entities x 4 + 6 relations x 2 + batch-norm of 4
    assert build("kd-rel-distmult", kb, dim=4).num_parameters() == 5 * 4 + 6 * 2 + 2 * 4 == 40
    # reciprocal-distmult: 5 entities x 4 + 6 relations x 4 + batch-norm of 4
    assert build("reciprocal-distmult", kb, dim=4).num_parameters() == 5 * 4 + 6 * 4 + 2 * 4 == 52
    # the running statistics are buffers, not parameters
    assert {"norm.running_mean", "norm.running_var"} <= set(build("kd-distmult", kb, dim=4).modules().state_dict())


def test_embeddings_export_one_row_per_relation_name(name, make_kb):
    worker = build(name, make_kb(5, 3), dim=16)
    exported = worker.embeddings()
    relation = worker.modules().relation.weight.detach()
    assert exported["entity"].shape == (5, 4 if name == "kd-distmult" else 16)
    relation_dim = 16 if name == "reciprocal-distmult" else 4
    assert exported["relation"].shape == (3, 2 * relation_dim) and str(exported["relation"].dtype) == "float32"
    torch.testing.assert_close(torch.from_numpy(exported["relation"][1]), torch.cat([relation[1], relation[4]]))


# -- training -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "regime, extra",
    [
        ("1vsAll", {}),
        ("KvsAll", {}),
        ("negative-sampling", {}),
        ("negative-sampling", {"loss": "logistic"}),
        ("1vsAll", {"label_smoothing": 0.1}),
        ("KvsAll", {"label_relaxation": 0.1, "dropout": 0.2}),
    ],
)
def test_each_regime_trains_one_step(name, regime, extra, make_kb):
    kb = random_kb(make_kb)
    worker = build(name, kb, regime=regime, negatives=4, **extra)
    before = {key: value.clone() for key, value in worker.modules().named_parameters()}
    optimizer = torch.optim.Adam(worker.modules().parameters(), lr=0.01)
    batch = torch.from_numpy(kb.train[:16])
    loss = worker.train_loss(batch)
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    optimizer.step()
    after = dict(worker.modules().named_parameters())
    for key in before:
        assert not torch.equal(before[key], after[key]), key
    relation_moved = (after["relation.weight"] != before["relation.weight"]).any(dim=1)
    used = torch.unique(batch[:, 1])
    assert relation_moved[used].all() and relation_moved[used + NUM_RELATIONS].all()  # forward and inverse rows


def test_kvsall_answers_are_every_train_tail_of_the_query(name, make_kb):
    kb = random_kb(make_kb, triples=80, seed=3)
    worker = build(name, kb, regime="KvsAll")
    expected: dict[tuple[int, int], set[int]] = {}
    for h, r, t in kb.train.tolist():
        expected.setdefault((h, r), set()).add(t)
        expected.setdefault((t, r + NUM_RELATIONS), set()).add(h)
    queries = torch.tensor([(e, r) for e in range(NUM_ENTITIES) for r in range(2 * NUM_RELATIONS)])
    rows, entities = worker.answers(queries[:, 0], queries[:, 1])
    got: dict[tuple[int, int], set[int]] = {}
    for row, entity in zip(rows.tolist(), entities.tolist()):
        got.setdefault(tuple(queries[row].tolist()), set()).add(entity)
    assert got == expected


def test_kvsall_loss_is_bce_against_the_full_label_vectors(make_kb):
    kb = make_kb(4, 1, train=[[0, 0, 1], [0, 0, 2], [3, 0, 2]])
    worker = build("kd-distmult", kb, regime="KvsAll", dim=4)
    batch = torch.tensor([[0, 0, 1]])
    model = worker.modules()
    with torch.no_grad():
        vectors = model.query(model.entity(torch.tensor([0, 1])), model.relation(torch.tensor([0, 1])))
        logits = vectors @ model.entity.weight.T
        labels = torch.tensor([[0.0, 1, 1, 0], [1, 0, 0, 0]])  # (0, r, ?) -> {1, 2}; (1, r^-1, ?) -> {0}
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        got = worker.train_loss(batch)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_true_triples_are_not_used_as_negatives(make_kb):
    """With every triple in train, every corruption is true: only the positive term is left."""
    kb = make_kb(3, 1, train=[[h, 0, t] for h in range(3) for t in range(3)])
    worker = build("kd-distmult", kb, regime="negative-sampling", negatives=8, dim=4)
    batch = torch.from_numpy(kb.train)
    model = worker.modules()
    with torch.no_grad():
        given, relation = torch.cat([batch[:, 0], batch[:, 2]]), torch.cat([batch[:, 1], batch[:, 1] + 1])
        targets = torch.cat([batch[:, 2], batch[:, 0]])
        positive = (model.query(model.entity(given), model.relation(relation)) * model.entity(targets)).sum(-1)
        got = worker.train_loss(batch)
    assert got.item() == pytest.approx((torch.nn.functional.softplus(-positive).mean() / 2).item(), rel=1e-5)


def test_label_relaxation_by_hand():
    alpha = 0.1
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    # inside the credal sets (p >= .9 for a true answer, p <= .1 for a false one): no loss
    assert relaxation_loss(torch.tensor([[logit(0.95), logit(0.05), logit(0.91), logit(0.09)]]), labels, alpha).item() == pytest.approx(0.0, abs=1e-6)
    # outside: KL((.9, .1) || (p, 1 - p)) for a true answer at p = .5, KL((.1, .9) || ...) for a false one at p = .7
    kl_true = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    kl_false = 0.1 * math.log(0.1 / 0.7) + 0.9 * math.log(0.9 / 0.3)
    got = relaxation_loss(torch.tensor([[0.0, logit(0.7), logit(0.95), logit(0.05)]]), labels, alpha)
    assert got.item() == pytest.approx((kl_true + kl_false) / 4, rel=1e-5)


@pytest.mark.parametrize("name, regime, dim", [("kd-distmult", "KvsAll", 256), ("kd-rel-distmult", "1vsAll", 256), ("reciprocal-distmult", "1vsAll", 64)])
def test_learns_umls(name, regime, dim, one_thread):
    kb = load_kb(UMLS)
    worker = build(name, kb, regime=regime, dim=dim, batch_size=128)
    known = KnownAnswers(kb.known_triples(), len(kb.entities), len(kb.relations))
    worker.modules().eval()
    untrained = evaluate_ranking(worker.score, kb.test, known)
    worker.modules().train()
    started = time.perf_counter()
    optimizer = torch.optim.Adam(worker.modules().parameters(), lr=worker.settings.learning_rate)
    train = torch.from_numpy(kb.train)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = train[torch.randint(len(train), (128,), generator=generator)]
        optimizer.zero_grad()
        worker.train_loss(batch).backward()
        optimizer.step()
    worker.modules().eval()
    result = evaluate_ranking(worker.score, kb.test, known)
    seconds = time.perf_counter() - started
    print(f"{name} {regime} d={dim}: |Theta|={worker.num_parameters()} test MRR {untrained.mrr:.3f} -> {result.mrr:.3f} in {seconds:.1f} s")
    assert result.mrr > 0.3 and result.mrr > 5 * untrained.mrr, (untrained, result)
