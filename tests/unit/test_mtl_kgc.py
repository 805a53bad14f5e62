"""``mtl-kgc``: its inputs and scores against hand-built sequences, each task's loss by hand, the MT-DNN task draw, filtered negatives, rerank, and that it learns.

``COVERED_WORKER_TYPES`` is read by ``test_registry``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from kdmkb.kb_worker.data import EntityTexts, RelationTexts
from kdmkb.kb_worker.ranking import KnownAnswers, evaluate_ranking
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind
from kdmkb.kb_worker.worker_types.base import Ranking
from kdmkb.kb_worker.worker_types.mtl_kgc import TaskSchedule, build_sequence, fit_lengths
from kdmkb.services.errors import ConfigError

COVERED_WORKER_TYPES = ("mtl-kgc",)
TAIL, HEAD, RELATION = QueryKind.TAIL, QueryKind.HEAD, QueryKind.RELATION

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny encoders: threads only wait on each other


@pytest.fixture(scope="module")
def encoder(tiny_encoder, tmp_path_factory) -> str:
    """conftest's tiny encoder with its tokenizer read from vocab.txt.

    Under transformers 5 the fixture's ``BertTokenizerFast(vocab_file=...)`` ignores the file and
    saves a tokenizer.json of the five special tokens alone, which reads every word as [UNK];
    without that file the folder's vocab.txt is read.
    """
    folder = tmp_path_factory.mktemp("tiny-encoder-vocab")
    shutil.copytree(tiny_encoder, folder, dirs_exist_ok=True)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    return str(folder)


def _texts(kb, names, descriptions, relations):
    """``kb`` with entity texts (an empty name: no row for that entity) and relation texts."""
    present = np.array([bool(name) for name in names])
    entity_text = EntityTexts(tuple(names), tuple(descriptions), present)
    return dataclasses.replace(kb, entity_text=entity_text, relation_text=RelationTexts(tuple(relations), np.ones(len(relations), dtype=bool)))


def _small_kb(make_kb):
    kb = make_kb(4, 2, train=[[0, 0, 1], [1, 1, 2], [2, 0, 3], [3, 1, 0]], test=[[0, 1, 2], [1, 0, 3]])
    return _texts(kb, ["ab", "ef", "", "gh"], ["cd", "", "", "a long one"], ["rel", "s"])


def _worker(kb, encoder, seed=0, **settings):
    cls = WORKER_TYPES.get("mtl-kgc")
    torch.manual_seed(seed)
    return cls(kb, cls.validate_settings({"encoder": encoder, "max_length": 32, "device": "cpu", **settings}))


def _ids(encoder, tokens: str) -> list[int]:
    """Ids of space-separated tokens in the tiny encoder's vocabulary (one token a line)."""
    vocabulary = (Path(encoder) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return [vocabulary.index(token) for token in tokens.split()]


def _captured(worker, monkeypatch) -> list:
    """Sequences the worker encodes from now on (their [CLS] vectors become zeros)."""
    seen = []

    def record(sequences):
        seen.extend(sequences)
        return torch.zeros(len(sequences), worker.network["encoder"].config.hidden_size)

    monkeypatch.setattr(worker, "_cls_vectors", record)
    return seen


# -- inputs ---------------------------------------------------------------------------------------
def test_triples_read_cls_h_sep_r_sep_t_sep_with_segments_0_1_0(make_kb, encoder, monkeypatch):
    worker = _worker(_small_kb(make_kb), encoder, tasks=["lp"])
    seen = _captured(worker, monkeypatch)
    worker.score(TAIL, torch.tensor([[0, 0]]), torch.tensor([[1, 2]]))
    worker.score(HEAD, torch.tensor([[1, 3]]), torch.tensor([[0]]))
    worker.score(RELATION, torch.tensor([[1, 0]]), torch.tensor([[1]]))  # without an RP head: LP's input
    # "ab, cd": name, description; "ef": no description; entity 2 has no text row: its id "e2"
    expected = [
        ("[CLS] a ##b , c ##d [SEP] r ##e ##l [SEP] e ##f [SEP]", [0] * 7 + [1] * 4 + [0] * 3),
        ("[CLS] a ##b , c ##d [SEP] r ##e ##l [SEP] e ##2 [SEP]", [0] * 7 + [1] * 4 + [0] * 3),
        ("[CLS] a ##b , c ##d [SEP] s [SEP] g ##h , a l ##o ##n ##g o ##n ##e [SEP]", [0] * 7 + [1] * 2 + [0] * 12),
        ("[CLS] e ##f [SEP] s [SEP] a ##b , c ##d [SEP]", [0] * 4 + [1] * 2 + [0] * 6),
    ]
    assert seen == [(_ids(encoder, tokens), types) for tokens, types in expected]


def test_relation_prediction_reads_cls_h_sep_t_sep(make_kb, encoder, monkeypatch):
    worker = _worker(_small_kb(make_kb), encoder)
    seen = _captured(worker, monkeypatch)
    scores = worker.score(RELATION, torch.tensor([[1, 0]]), torch.tensor([[1, 1, 0]]))
    assert scores.shape == (1, 3)
    assert seen == [(_ids(encoder, "[CLS] e ##f [SEP] a ##b , c ##d [SEP]"), [0] * 4 + [1] * 6)]  # one pass for every relation


def _pop_longest(lengths, budget):
    """The truncation by its definition: one token off the longest segment (the last of equals) at a time."""
    lengths = list(lengths)
    while sum(lengths) > budget:
        longest = max(range(len(lengths)), key=lambda i: (lengths[i], i))
        lengths[longest] -= 1
    return lengths


def test_truncation_cuts_the_longest_segment_first():
    assert fit_lengths([10, 2, 5], 12) == [5, 2, 5]
    assert fit_lengths([5, 5, 5], 10) == [4, 3, 3]
    assert fit_lengths([7, 1, 7], 10) == [5, 1, 4]
    assert fit_lengths([3, 1, 2], 10) == [3, 1, 2]
    assert fit_lengths([9, 4], 6) == [3, 3]
    for lengths in itertools.product(range(8), repeat=3):
        for budget in range(0, 22, 3):
            assert fit_lengths(lengths, budget) == _pop_longest(lengths, budget), (lengths, budget)
    ids, types = build_sequence([[11, 12, 13, 14, 15], [21, 22, 23], [31, 32]], 1, 2, 8)  # 4 tokens left for [5, 3, 2]
    assert ids == [1, 11, 12, 2, 21, 2, 31, 2] and types == [0, 0, 0, 0, 1, 1, 0, 0]


def test_a_long_text_is_cut_before_the_short_ones(make_kb, encoder, monkeypatch):
    worker = _worker(_small_kb(make_kb), encoder, tasks=["lp"], max_length=12)
    seen = _captured(worker, monkeypatch)
    worker.score(TAIL, torch.tensor([[3, 1]]), torch.tensor([[1]]))  # "gh, a long one" (11 tokens), "s" (1), "ef" (2): 8 fit
    assert seen == [(_ids(encoder, "[CLS] g ##h , a l [SEP] s [SEP] e ##f [SEP]"), [0] * 7 + [1] * 2 + [0] * 3)]


# -- scores against a hand-built encoder pass ------------------------------------------------------
def _reference_cls(worker, encoder, tokens: str, types: list[int]) -> torch.Tensor:
    """The [CLS] vector of one unpadded sequence, by a bare call of the encoder."""
    ids = torch.tensor([_ids(encoder, tokens)])
    return worker.network["encoder"](input_ids=ids, token_type_ids=torch.tensor([types])).last_hidden_state[0, 0]


def test_scores_are_the_lp_s1_logit_and_the_rp_logits(make_kb, encoder):
    worker = _worker(_small_kb(make_kb), encoder)
    worker.modules().eval()
    lp, rp = worker.network["lp"], worker.network["rp"]
    text = {0: "a ##b , c ##d", 1: "e ##f", 2: "e ##2", 3: "g ##h , a l ##o ##n ##g o ##n ##e"}
    relation = {0: "r ##e ##l", 1: "s"}

    def s1(h, r, t):
        tokens = f"[CLS] {text[h]} [SEP] {relation[r]} [SEP] {text[t]} [SEP]"
        segments = [0] * (len(text[h].split()) + 2) + [1] * (len(relation[r].split()) + 1) + [0] * (len(text[t].split()) + 1)
        return float(lp(_reference_cls(worker, encoder, tokens, segments))[1])

    with torch.no_grad():
        tails = worker.score(TAIL, torch.tensor([[0, 1], [3, 0]]))
        heads = worker.score(HEAD, torch.tensor([[1, 2]]), torch.tensor([[3, 0, 2]]))
        relations = worker.score(RELATION, torch.tensor([[2, 1]]))
        pair = _reference_cls(worker, encoder, f"[CLS] {text[2]} [SEP] {text[1]} [SEP]", [0] * 4 + [1] * 3)
        expected_relations = rp(pair)
        expected_tails = [[s1(h, r, t) for t in range(4)] for h, r in ((0, 1), (3, 0))]
        expected_heads = [s1(h, 1, 2) for h in (3, 0, 2)]
    assert tails.tolist() == [pytest.approx(row, abs=1e-5) for row in expected_tails]
    assert heads[0].tolist() == pytest.approx(expected_heads, abs=1e-5)
    assert relations[0].tolist() == pytest.approx(expected_relations.tolist(), abs=1e-5)
    assert worker.logit_scale == 1.0 and worker.slice_pairs <= 1024


# -- each task's loss, for fixed head outputs --------------------------------------------------------
def _fixed(worker, monkeypatch, task, fake=None, valid=None):
    monkeypatch.setattr(worker, "task", lambda: task)
    if fake is not None:
        monkeypatch.setattr(worker, "corruptions", lambda batch: (fake, valid))


def test_link_prediction_loss_is_cross_entropy_over_positives_and_kept_negatives(make_kb, encoder, monkeypatch):
    worker = _worker(_small_kb(make_kb), encoder)
    batch = torch.tensor([[0, 0, 1], [1, 1, 2]])
    fake = torch.tensor([[[0, 0, 3]], [[1, 1, 0]]])
    _fixed(worker, monkeypatch, "lp", fake, torch.tensor([[True], [False]]))
    calls = []
    logits = torch.tensor([[0.0, 1.0], [0.5, -0.5], [2.0, 0.0]])
    monkeypatch.setattr(worker, "lp_logits", lambda triples: calls.append(triples.tolist()) or logits)
    loss = worker.train_loss(batch)
    assert calls == [[[0, 0, 1], [1, 1, 2], [0, 0, 3]]]  # the dropped negative is never encoded
    # labels 1, 1, 0: -log softmax(row)[label], averaged
    by_hand = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0)) + math.log(1 + math.exp(-2.0))) / 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_relation_prediction_loss_is_cross_entropy_over_relations(make_kb, encoder, monkeypatch):
    worker = _worker(_small_kb(make_kb), encoder)
    _fixed(worker, monkeypatch, "rp")
    calls = []
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    monkeypatch.setattr(worker, "rp_logits", lambda pairs: calls.append(pairs.tolist()) or logits)
    loss = worker.train_loss(torch.tensor([[0, 0, 1], [1, 0, 2]]))
    assert calls == [[[0, 1], [1, 2]]]
    by_hand = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(3.0))) / 2  # labels 0, 0
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_relevance_ranking_loss_is_the_margin_hinge_per_corrupted_twin(make_kb, encoder, monkeypatch):
    worker = _worker(_small_kb(make_kb), encoder, negatives=2)
    batch = torch.tensor([[0, 0, 1], [1, 1, 2]])
    fake = torch.tensor([[[0, 0, 3], [2, 0, 1]], [[1, 1, 0], [3, 1, 2]]])
    _fixed(worker, monkeypatch, "rr", fake, torch.tensor([[True, False], [True, True]]))
    calls = []
    scores = torch.tensor([0.8, 0.3, 0.75, 0.2, 0.5])  # positives, then the kept negatives in order
    monkeypatch.setattr(worker, "rr_scores", lambda triples: calls.append(triples.tolist()) or scores)
    loss = worker.train_loss(batch)
    assert calls == [[[0, 0, 1], [1, 1, 2], [0, 0, 3], [1, 1, 0], [3, 1, 2]]]
    # max(0, h(x') - h(x) + 0.1) per (positive, kept twin): 0.05, 0, 0.3
    assert loss.item() == pytest.approx((0.05 + 0.0 + 0.3) / 3, rel=1e-6)


def test_rr_head_is_a_sigmoid_of_the_cls_vector(make_kb, encoder):
    worker = _worker(_small_kb(make_kb), encoder)
    worker.modules().eval()
    with torch.no_grad():
        got = worker.rr_scores(torch.tensor([[1, 1, 0]]))
        cls = _reference_cls(worker, encoder, "[CLS] e ##f [SEP] s [SEP] a ##b , c ##d [SEP]", [0] * 4 + [1] * 2 + [0] * 6)
        expected = torch.sigmoid(worker.network["rr"](cls))
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-6)


# -- the task draw ---------------------------------------------------------------------------------
def test_a_pass_draws_each_task_as_often_as_it_has_batches_then_starts_again():
    schedule = TaskSchedule({"lp": 6, "rp": 3, "rr": 1}, torch.Generator().manual_seed(0))
    for _ in range(3):
        drawn = [schedule.draw() for _ in range(10)]
        assert sorted(drawn) == sorted(["lp"] * 6 + ["rp"] * 3 + ["rr"])


def test_a_draw_is_proportional_to_the_batches_left():
    generator = torch.Generator().manual_seed(0)
    trials = 4000
    first, after_two_lp = {"lp": 0, "rp": 0, "rr": 0}, {"lp": 0, "rp": 0, "rr": 0}
    for _ in range(trials):
        schedule = TaskSchedule({"lp": 6, "rp": 3, "rr": 1}, generator)
        first[schedule.draw()] += 1
        schedule.left = torch.tensor([4.0, 3.0, 1.0])  # as if two lp batches were spent
        after_two_lp[schedule.draw()] += 1
    for counts, shares in ((first, (0.6, 0.3, 0.1)), (after_two_lp, (0.5, 0.375, 0.125))):
        for task, share in zip(("lp", "rp", "rr"), shares):
            assert abs(counts[task] - share * trials) < 5 * math.sqrt(trials * share * (1 - share)), (counts, shares)


def test_each_step_draws_one_task_from_a_seeded_stream(make_kb, encoder):
    kb = _small_kb(make_kb)

    def steps(seed: int) -> list[str]:
        worker = _worker(kb, encoder, seed, batch_size=2)  # 4 triples: 2 batches per task and pass
        drawn = []
        for step in range(12):
            worker.updates = step
            drawn.append(worker.task())
            assert worker.task() == drawn[-1]  # asking again within a step does not draw again
        return drawn

    first = steps(0)
    assert first == steps(0)
    for start in (0, 6):  # two whole passes: every task twice in each
        assert sorted(first[start : start + 6]) == ["lp", "lp", "rp", "rp", "rr", "rr"]
    assert {tuple(steps(seed)) for seed in range(1, 6)} != {tuple(first)}


def test_only_listed_tasks_are_drawn_and_get_heads(make_kb, encoder):
    worker = _worker(_small_kb(make_kb), encoder, tasks=["lp", "rr"])
    assert "rp" not in worker.network and "rr" in worker.network
    drawn = set()
    for step in range(8):
        worker.updates = step
        drawn.add(worker.task())
    assert drawn == {"lp", "rr"}


# -- negatives --------------------------------------------------------------------------------------
def test_corruptions_that_are_train_triples_are_not_negatives(make_kb, encoder):
    kb = make_kb(3, 1, train=[[h, 0, t] for h in range(3) for t in range(3) if (h, t) != (0, 2)])
    worker = _worker(_texts(kb, ["a", "b", "c"], ["", "", ""], ["r"]), encoder, negatives=40)
    train = {tuple(row) for row in kb.train.tolist()}
    batch = torch.from_numpy(kb.train)
    fake, valid = worker.corruptions(batch)
    assert fake.shape == (len(batch), 40, 3) and valid.shape == (len(batch), 40)
    for positive, rows, keep in zip(batch.tolist(), fake.tolist(), valid.tolist()):
        for row, kept in zip(rows, keep):
            assert row[1] == positive[1] and (row[0] == positive[0] or row[2] == positive[2])
            assert kept == (tuple(row) not in train)
    assert 0 < int(valid.sum()) < valid.numel()  # (0, 0, 2) is the one corruption that stays


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tasks": ["rp", "rr"]}, r"tasks[\s\S]*'lp' is required"),
        ({"tasks": ["lp", "mlm"]}, r"tasks[\s\S]*unknown task 'mlm'; known: lp, rp, rr"),
        ({"tasks": ["lp", "lp"]}, r"tasks[\s\S]*listed twice"),
        ({"retriever": "transh"}, r"settings.retriever: unknown worker type 'transh'"),
        ({"retriever_settings": {"dimm": 4}}, r"settings.retriever_settings:[\s\S]*dimm"),
        ({"retriever_settings": {"device": "cuda"}}, r"settings.retriever_settings.device: the retriever shares this worker's"),
        ({"rerank_k": -1}, r"rerank_k"),
    ],
)
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        WORKER_TYPES.get("mtl-kgc").validate_settings(settings)


def test_a_max_length_beyond_the_encoders_positions_is_refused(make_kb, encoder):
    with pytest.raises(ConfigError, match=r"settings.max_length: 200 is beyond the encoder's 128 positions"):
        _worker(_small_kb(make_kb), encoder, max_length=200)


def test_defaults_follow_the_paper():
    settings = WORKER_TYPES.get("mtl-kgc").validate_settings({})
    assert settings.tasks == ["lp", "rp", "rr"] and settings.negatives == 1 and settings.margin == 0.1
    assert settings.rerank_k == 0 and settings.retriever == "rotate"


# -- ranking: exact, or the retriever's top k reranked ------------------------------------------------
def _rerank_kb(make_kb):
    rng = np.random.default_rng(0)
    triples = np.unique(np.stack([rng.integers(0, 8, 40), rng.integers(0, 2, 40), rng.integers(0, 8, 40)], 1), axis=0)
    kb = make_kb(8, 2, train=triples[:-6], test=triples[-6:])
    return _texts(kb, [f"thing {i}" for i in range(8)], ["" for _ in range(8)], ["is near", "holds"])


def test_rerank_is_labelled_with_a_recall_and_equals_exact_ranking_at_every_entity(make_kb, encoder):
    kb = _rerank_kb(make_kb)
    known = KnownAnswers(kb.known_triples(), 8, 2)
    exact_worker = _worker(kb, encoder)
    exact_worker.modules().eval()
    assert exact_worker.ranking() == Ranking()
    exact = evaluate_ranking(exact_worker.score, kb.test, known, batch_size=4, ranking=exact_worker.ranking())
    for k in (3, 8):
        worker = _worker(kb, encoder, rerank_k=k, retriever_settings={"dim": 4})
        worker.modules().eval()
        ranking = worker.ranking()
        result = evaluate_ranking(worker.score, kb.test, known, batch_size=4, ranking=ranking)
        assert result.ranking == f"rerank@{k}(rotate)" and 0 <= result.retriever_recall <= 1
        if k == 8:
            assert result.retriever_recall == 1.0
            assert (result.mrr, result.mr, result.hits_at_1) == pytest.approx((exact.mrr, exact.mr, exact.hits_at_1))


def test_top_candidates_rerank_the_retrievers_shortlist(make_kb, encoder):
    worker = _worker(_rerank_kb(make_kb), encoder, rerank_k=4, retriever_settings={"dim": 4})
    worker.modules().eval()
    queries, pool = torch.tensor([[0, 1], [5, 0]]), torch.arange(8)
    shortlist = worker.retriever.top_candidates(TAIL, queries, pool, 4)
    top = worker.top_candidates(TAIL, queries, pool, 2)
    scores = worker.score_sliced(TAIL, queries, shortlist)
    assert torch.equal(top, shortlist.gather(1, scores.topk(2, dim=1).indices))
    assert worker.top_candidates(TAIL, queries, pool, 6).shape == (2, 6)  # k beyond rerank_k: the retriever's top k


def test_the_retriever_trains_on_a_batch_of_its_own_size_in_its_own_parameter_group(make_kb, encoder, monkeypatch):
    worker = _worker(_rerank_kb(make_kb), encoder, rerank_k=4, retriever_settings={"dim": 4, "learning_rate": 0.05, "batch_size": 5}, learning_rate=0.002)
    groups = worker.parameter_groups()
    assert [group["lr"] for group in groups] == [2e-5, 0.002, 0.05]
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in worker.retriever.modules().parameters()}
    assert {id(p) for group in groups for p in group["params"]} == {id(p) for p in worker.modules().parameters()}
    assert "retriever.entity.weight" in worker.modules().state_dict()  # checkpoints hold it
    batch = torch.from_numpy(worker.kb.train[:4])
    _fixed(worker, monkeypatch, "rp")
    own_batch = worker.retriever_batch()
    assert own_batch.shape == (5, 3) and worker.retriever_batch() is own_batch  # drawn once per step
    torch.manual_seed(1)
    own = worker.train_loss(batch)
    torch.manual_seed(1)
    expected = torch.nn.functional.cross_entropy(worker.rp_logits(batch[:, [0, 2]]), batch[:, 1]) + worker.retriever.train_loss(own_batch)
    assert own.item() == pytest.approx(expected.item(), rel=1e-6)
    worker.updates += 1
    assert not torch.equal(worker.retriever_batch(), own_batch)  # the next step, the next batch


def test_the_retrievers_batches_pass_over_every_train_triple_and_resume_from_a_checkpoint(make_kb, encoder):
    kb = _rerank_kb(make_kb)
    size = len(kb.train) // 3
    settings = {"rerank_k": 4, "retriever_settings": {"dim": 4, "batch_size": size}}
    worker = _worker(kb, encoder, **settings)

    def steps(worker, count):
        drawn = []
        for _ in range(count):
            drawn.append(worker.retriever_batch())
            worker.updates += 1
        return torch.cat(drawn)

    one_pass = steps(worker, 3)
    rows = {tuple(row) for row in one_pass.tolist()}
    assert len(rows) == 3 * size and rows <= {tuple(row) for row in kb.train.tolist()}  # train rows, none twice in a pass
    steps(worker, 1)  # into the second pass
    state = worker.training_state()
    expected = steps(worker, 4)
    resumed = _worker(kb, encoder, seed=7, **settings)
    resumed.load_training_state(state)
    resumed.updates = worker.updates - 4
    torch.manual_seed(11)  # the batches come from the retriever's own generator, in the state
    assert torch.equal(steps(resumed, 4), expected)


# -- it learns --------------------------------------------------------------------------------------
def test_link_prediction_learns_a_tiny_kb(make_kb, encoder):
    """Ten entities with distinct texts: after 300 LP steps the train triples' tails rank near the top (chance MRR ~0.3)."""
    train = [[0, 0, 1], [1, 0, 2], [2, 0, 3], [3, 0, 4], [5, 1, 6], [6, 1, 7], [7, 1, 8], [8, 1, 9], [4, 1, 0], [9, 0, 5]]
    kb = make_kb(10, 2, train=train, test=train[:2])
    words = ["apple", "brick", "cloud", "dune", "ember", "frost", "grove", "harbor", "island", "jungle"]
    kb = _texts(kb, words, ["" for _ in words], ["flows to", "grows near"])
    worker = _worker(kb, encoder, tasks=["lp"], negatives=3, learning_rate=3e-3, encoder_learning_rate=3e-3)
    optimizer = worker.optimizer()
    batch = torch.from_numpy(kb.train)
    known = KnownAnswers(kb.known_triples(), 10, 2)

    def mrr() -> float:
        worker.modules().eval()
        result = evaluate_ranking(worker.score, kb.train, known, batch_size=10)
        worker.modules().train()
        return result.mrr

    before = mrr()
    for _ in range(300):
        optimizer.zero_grad()
        worker.train_loss(batch).backward()
        optimizer.step()
        worker.updates += 1
    after = mrr()
    assert after > 0.7 and after > before + 0.3, (before, after)


def test_a_student_step_over_many_candidates_recomputes_each_pass_and_keeps_the_same_gradients(make_kb, encoder, same_gradients_in_passes):
    """A student scores one cross-encoder sequence per (query, candidate): with gradients, each pass
    of ``eval_batch_size`` sequences keeps only its outputs (the encoder runs again in the backward
    pass), and the gradients equal those of one pass holding every activation."""
    queries = torch.tensor([[0, 1], [3, 0]])

    def step(eval_batch_size):
        worker = _worker(_small_kb(make_kb), encoder, eval_batch_size=eval_batch_size)
        return worker, worker.network["encoder"], lambda: worker.score(TAIL, queries)

    # 2 queries x 4 candidates: one pass of 64, or three passes of 3, each run again backward
    same_gradients_in_passes(step, whole=64, passes=3, runs=(1, 6))
