"""The worker-type registry: lookup errors, every registered type trains, every type has score tests."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pydantic
import pytest
import torch

from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind, WorkerType
from kdmkb.kb_worker.worker_types.kronecker import ReciprocalWorker
from kdmkb.kb_worker.worker_types.structural import StructuralWorker
from kdmkb.services.errors import ConfigError
from kdmkb.services.registry import Registry

BUILT_IN = ("complex", "distmult", "kd-distmult", "kd-rel-distmult", "reciprocal-distmult", "rotate", "transe")


# Test modules whose COVERED_WORKER_TYPES name the worker types their score tests cover.
SCORE_TEST_MODULES = ("test_scoring.py", "test_kronecker.py", "test_feature_mlp.py", "test_feature_complex.py", "test_mtl_kgc.py", "test_lmke.py")


def _test_module(filename: str):
    spec = importlib.util.spec_from_file_location(f"_unit_{Path(filename).stem}_cases", Path(__file__).with_name(filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _is_structural(name: str) -> bool:
    return issubclass(WORKER_TYPES.get(name), StructuralWorker)


STRUCTURAL = [name for name in WORKER_TYPES.names() if _is_structural(name)]
# Types that can train by negative sampling over entity tables (structural, Kronecker); the others' training has tests of its own.
NEGATIVE_SAMPLING = [name for name in WORKER_TYPES.names() if issubclass(WORKER_TYPES.get(name), StructuralWorker | ReciprocalWorker)]


def _negative_sampling_settings(name: str, **settings) -> dict:
    """Settings that train ``name`` with sampled negatives (Kronecker types: a square dim and that regime)."""
    if _is_structural(name):
        return settings
    return {**settings, "dim": math.isqrt(settings["dim"]) ** 2, "regime": "negative-sampling"}


def test_unknown_worker_type_lists_the_known_ones():
    with pytest.raises(ConfigError) as raised:
        WORKER_TYPES.get("transh")
    message = str(raised.value)
    assert "'transh'" in message
    for name in BUILT_IN:
        assert name in message


def test_built_in_worker_types_are_registered():
    assert set(BUILT_IN) <= set(WORKER_TYPES.names())
    assert WORKER_TYPES.names() == sorted(WORKER_TYPES.names()) == list(WORKER_TYPES)
    assert "transe" in WORKER_TYPES and "nope" not in WORKER_TYPES


def test_every_worker_type_has_scoring_tests():
    """A new worker type must get a case (and its reference formula) in test_scoring.CASES or test_kronecker."""
    covered = {name: filename for filename in SCORE_TEST_MODULES for name in _test_module(filename).COVERED_WORKER_TYPES}
    assert set(covered) <= set(WORKER_TYPES.names()), "a test module claims a worker type that is not registered"
    missing = set(WORKER_TYPES.names()) - set(covered)
    assert not missing, f"worker types without score tests in {', '.join(SCORE_TEST_MODULES)}: {sorted(missing)}"
    assert set(STRUCTURAL) <= {name for name, filename in covered.items() if filename == "test_scoring.py"}


def test_registry_rejects_a_second_registration():
    registry: Registry[type] = Registry("thing")
    registry.register("a")(int)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(float)
    assert registry.get("a") is int
    with pytest.raises(ConfigError, match="unknown thing 'b'; known: a"):
        registry.get("b")


@pytest.fixture
def train_kb(make_kb):
    rng = torch.Generator().manual_seed(0)
    triples = torch.stack([torch.randint(12, (40,), generator=rng), torch.randint(3, (40,), generator=rng), torch.randint(12, (40,), generator=rng)], 1)
    return make_kb(12, 3, train=triples.numpy())


@pytest.mark.parametrize("name", NEGATIVE_SAMPLING)
@pytest.mark.parametrize("loss", ["self-adversarial", "logistic"])
def test_every_embedding_type_builds_and_trains_one_step(name, loss, train_kb):
    cls = WORKER_TYPES.get(name)
    assert issubclass(cls, WorkerType)
    extra = {"regularization": 0.01} if _is_structural(name) else {}
    settings = cls.validate_settings(_negative_sampling_settings(name, dim=8, negatives=4, loss=loss, **extra))
    worker = cls(train_kb, settings)
    assert worker.num_entities == 12 and worker.num_relations == 3
    assert worker.num_parameters() == sum(p.numel() for p in worker.modules().parameters()) > 0
    before = {key: value.clone() for key, value in worker.modules().state_dict().items()}
    optimizer = torch.optim.Adam(worker.modules().parameters(), lr=0.01)
    batch = torch.from_numpy(train_kb.train[:16])
    loss_value = worker.train_loss(batch)
    assert loss_value.ndim == 0 and math.isfinite(loss_value.item())
    loss_value.backward()
    optimizer.step()
    after = worker.modules().state_dict()
    for key in ("entity.weight", "relation.weight"):
        changed = (after[key] != before[key]).any(dim=1)
        used = torch.unique(batch[:, 1]) if key.startswith("relation") else torch.unique(batch[:, [0, 2]])
        assert changed[used].all(), f"{key}: a row used by the batch did not move"
    exported = worker.embeddings()
    assert exported["entity"].shape[0] == 12 and exported["relation"].shape[0] == 3
    assert str(exported["entity"].dtype) == "float32"


def test_settings_are_validated():
    cls = WORKER_TYPES.get("transe")
    with pytest.raises(pydantic.ValidationError, match="dimm"):
        cls.validate_settings({"dimm": 3})
    with pytest.raises(pydantic.ValidationError, match="dim"):
        cls.validate_settings({"dim": 0})
    with pytest.raises(pydantic.ValidationError, match="norm"):
        cls.validate_settings({"norm": 3})
    defaults = cls.validate_settings(None)
    assert defaults.dim == 100 and defaults.norm == 1


@pytest.mark.parametrize("name", NEGATIVE_SAMPLING)
def test_negatives_are_sampled_over_all_entities(name, make_kb):
    """A batch of two triples still moves most other entities: they were drawn as negatives."""
    kb = make_kb(12, 2, train=[[0, 0, 1], [2, 1, 3]])
    cls = WORKER_TYPES.get(name)
    worker = cls(kb, cls.validate_settings(_negative_sampling_settings(name, dim=4, negatives=32)))
    worker.train_loss(torch.from_numpy(kb.train)).backward()
    moved = worker.modules().entity.weight.grad.abs().sum(dim=1) > 0
    assert moved[:4].all()
    assert int(moved[4:].sum()) >= 6, moved


@pytest.mark.parametrize("name", STRUCTURAL)  # the Kronecker types' version is in test_kronecker
@pytest.mark.parametrize("loss", ["self-adversarial", "logistic"])
def test_true_triples_are_not_used_as_negatives(name, loss, make_kb):
    """With every possible triple in train, every corruption is true: only the positive term is left."""
    kb = make_kb(3, 1, train=[[h, 0, t] for h in range(3) for t in range(3)])
    cls = WORKER_TYPES.get(name)
    worker = cls(kb, cls.validate_settings({"dim": 4, "negatives": 8, "loss": loss}))
    batch = torch.from_numpy(kb.train)
    with torch.no_grad():
        positive = worker.score(QueryKind.TAIL, batch[:, :2], batch[:, 2:])[:, 0] + worker.modules().margin
        got = worker.train_loss(batch)
    positive_term = torch.nn.functional.softplus(-positive).mean()  # -log sigmoid(p)
    expected = positive_term / 2 if loss == "self-adversarial" else positive_term
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
