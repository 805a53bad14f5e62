"""``lmke`` (C-LMKE): scores against hand-built sequences, encoder passes and MLP, its degree features,
its in-batch contrastive loss and memory bank, its faiss shortlist, and that it learns (tiny random BERT)."""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import pytest
import torch

from kdmkb.kb_worker.data import EntityTexts, RelationTexts
from kdmkb.kb_worker.ranking import KnownAnswers, evaluate_ranking
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind
from kdmkb.kb_worker.worker_types.lmke import contrastive_bce
from kdmkb.services.errors import ConfigError

COVERED_WORKER_TYPES = ("lmke",)

TAIL, HEAD, RELATION = QueryKind.TAIL, QueryKind.HEAD, QueryKind.RELATION
NAMES = ("ann", "bob", "cat", "dan", "eve")
DESCRIPTIONS = ("a painter", "a baker", "", "a pilot", "a judge")
RELATIONS = ("likes", "owns")
TRAIN = [[0, 0, 1], [0, 0, 2], [1, 1, 3], [3, 0, 1], [4, 1, 0], [2, 0, 4]]


def text_kb(make_kb, train=TRAIN, names=NAMES, descriptions=DESCRIPTIONS, relations=RELATIONS, **splits):
    kb = make_kb(len(names), len(relations), train=train, **splits)
    present = np.ones(len(names), dtype=bool)
    return dataclasses.replace(
        kb, entity_text=EntityTexts(tuple(names), tuple(descriptions), present), relation_text=RelationTexts(tuple(relations), np.ones(len(relations), dtype=bool))
    )


def build(kb, encoder, **settings):
    cls = WORKER_TYPES.get("lmke")
    torch.manual_seed(0)
    return cls(kb, cls.validate_settings({"encoder": encoder, "max_length": 32, "hidden": 8, "device": "cpu", **settings}))


@pytest.fixture
def tokenizer(tiny_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder)


# -- the hand-written reference ----------------------------------------------------------------
def hand_query(worker, tokenizer, entity_text, relation_text, entity, relation_token):
    """q: the query encoder at [MASK] of [CLS] [e] e-text [r] r-text [MASK] [SEP], the learned rows written in by hand."""
    model = worker.model
    first = tokenizer(entity_text, add_special_tokens=False)["input_ids"]
    second = tokenizer(relation_text, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.cls_token_id, 0, *first, 0, *second, tokenizer.mask_token_id, tokenizer.sep_token_id]
    embeds = model.query_encoder.embeddings.word_embeddings(torch.tensor(ids)).clone()
    embeds[1] = model.entity.weight[entity]
    embeds[2 + len(first)] = model.relation.weight[relation_token]
    return model.query_encoder(inputs_embeds=embeds[None]).last_hidden_state[0, len(ids) - 2]


def hand_key(worker, tokenizer, entity_text, entity):
    """k: the key encoder at [e] of [CLS] [e] e-text [SEP]."""
    model = worker.model
    ids = [tokenizer.cls_token_id, 0, *tokenizer(entity_text, add_special_tokens=False)["input_ids"], tokenizer.sep_token_id]
    embeds = model.query_encoder.embeddings.word_embeddings(torch.tensor(ids)).clone()
    embeds[1] = model.entity.weight[entity]
    return model.key_encoder(inputs_embeds=embeds[None]).last_hidden_state[0, 1]


def hand_logit(worker, q, k, given_degree, candidate_degree):
    """MLP([q; k; q - k; q * k; log(deg_given + 1); log(deg_candidate + 1)]), one concatenated input."""
    features = torch.cat([q, k, q - k, q * k, torch.tensor([math.log(given_degree + 1), math.log(candidate_degree + 1)])])
    return worker.model.matcher.mlp(features).item()


def entity_text(e):
    return f"{NAMES[e]}: {DESCRIPTIONS[e]}" if DESCRIPTIONS[e] else NAMES[e]


def degrees(train):
    counts = [0] * len(NAMES)
    for h, _, t in train:
        counts[h] += 1
        counts[t] += 1
    return counts


def test_scores_are_the_matcher_of_hand_encoded_queries_and_keys(make_kb, tiny_encoder, tokenizer):
    worker = build(text_kb(make_kb), tiny_encoder)
    worker.modules().eval()
    deg = degrees(TRAIN)
    m = len(RELATIONS)
    with torch.no_grad():
        tails = worker.score(TAIL, torch.tensor([[0, 1], [2, 0]]))
        heads = worker.score(HEAD, torch.tensor([[0, 1]]), torch.tensor([[3, 0, 4]]))
        relations = worker.score(RELATION, torch.tensor([[0, 4], [3, 1]]))
        keys = [hand_key(worker, tokenizer, entity_text(e), e) for e in range(len(NAMES))]
        for row, (h, r) in enumerate([(0, 1), (2, 0)]):
            q = hand_query(worker, tokenizer, entity_text(h), RELATIONS[r], h, r)
            expected = [hand_logit(worker, q, keys[t], deg[h], deg[t]) for t in range(len(NAMES))]
            assert tails[row].tolist() == pytest.approx(expected, abs=1e-5)
        # head query (r=0, t=1): the query of (1, r^-1), with the inverse token m + r and text
        q = hand_query(worker, tokenizer, entity_text(1), "inverse likes", 1, m + 0)
        assert heads[0].tolist() == pytest.approx([hand_logit(worker, q, keys[h], deg[1], deg[h]) for h in (3, 0, 4)], abs=1e-5)
        for row, (h, t) in enumerate([(0, 4), (3, 1)]):
            expected = [hand_logit(worker, hand_query(worker, tokenizer, entity_text(h), RELATIONS[r], h, r), keys[t], deg[h], deg[t]) for r in range(m)]
            assert relations[row].tolist() == pytest.approx(expected, abs=1e-5)


def test_sequences_place_the_learned_tokens_and_cut_the_longer_text_first(make_kb, tiny_encoder, tokenizer):
    long_description = " ".join(["x"] * 40)  # 40 tokens, one per word
    kb = text_kb(make_kb, descriptions=(long_description, "", "", "", ""))
    worker = build(kb, tiny_encoder, max_length=20)
    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    likes = tokenizer("likes", add_special_tokens=False)["input_ids"]
    bob = tokenizer("bob", add_special_tokens=False)["input_ids"]

    (short,) = worker.query_sequences([1], [0])  # bob, likes: no cut
    assert short.ids == [cls, mask, *bob, mask, *likes, mask, sep]
    assert short.slots == (1, 2 + len(bob)) and short.read == 3 + len(bob) + len(likes) == len(short.ids) - 2

    (cut,) = worker.query_sequences([0], [0])  # ann's text is cut to fit, the relation's is kept whole
    assert len(cut.ids) == 20 and cut.ids[0] == cls and cut.ids[-1] == sep and cut.ids[cut.read] == mask
    entity_part = 20 - 5 - len(likes)
    assert cut.slots == (1, 2 + entity_part) and cut.ids[cut.slots[1] + 1 : cut.read] == likes
    assert cut.ids[2 : 2 + entity_part] == tokenizer(f"ann: {long_description}", add_special_tokens=False)["input_ids"][:entity_part]

    (key,) = worker.key_sequences([0])
    assert len(key.ids) == 20 and key.ids[0] == cls and key.ids[-1] == sep and key.slots == (1,) and key.read == 1


def test_the_learned_tokens_enter_the_scores(make_kb, tiny_encoder):
    """Changing one entity's (relation's) token changes exactly the scores whose sequences hold it."""
    worker = build(text_kb(make_kb), tiny_encoder)
    worker.modules().eval()
    m = len(RELATIONS)

    def scores():
        with torch.no_grad():
            return (
                worker.score(TAIL, torch.tensor([[0, 0]]), torch.tensor([[1]])).item(),  # holds entity 0 (query)
                worker.score(TAIL, torch.tensor([[2, 0]]), torch.tensor([[0]])).item(),  # holds entity 0 (key)
                worker.score(TAIL, torch.tensor([[2, 0]]), torch.tensor([[1]])).item(),  # neither
                worker.score(HEAD, torch.tensor([[0, 2]]), torch.tensor([[1]])).item(),  # the inverse token of r0
            )

    before = scores()
    with torch.no_grad():  # not a constant shift: the embeddings' LayerNorm would remove it
        worker.model.entity.weight[0] += torch.randn(32)
    worker.updates += 1  # the rule that refreshes the cached keys
    after = scores()
    assert after[0] != pytest.approx(before[0]) and after[1] != pytest.approx(before[1])
    assert after[2:] == pytest.approx(before[2:], abs=1e-6)
    with torch.no_grad():
        worker.model.relation.weight[m + 0] += torch.randn(32)
    worker.updates += 1
    last = scores()
    assert last[:3] == pytest.approx(after[:3], abs=1e-6) and last[3] != pytest.approx(after[3])


def test_the_key_encoder_shares_word_embeddings_and_entity_tokens_only(make_kb, tiny_encoder):
    worker = build(text_kb(make_kb), tiny_encoder)
    model = worker.model
    assert model.key_encoder.get_input_embeddings().weight is model.query_encoder.get_input_embeddings().weight
    query_layer, key_layer = model.query_encoder.encoder.layer[0], model.key_encoder.encoder.layer[0]
    assert key_layer.attention.self.query.weight is not query_layer.attention.self.query.weight
    assert torch.equal(key_layer.attention.self.query.weight, query_layer.attention.self.query.weight)  # a copy, at first
    # the key's entity token is the query's: a loss on one key moves the row the queries read
    key = worker._encode_keys(torch.tensor([3]))
    (key * torch.randn(32)).sum().backward()  # not key.sum(): the sum of a LayerNorm's output is constant
    assert model.entity.weight.grad[3].abs().sum() > 0 and model.entity.weight.grad[[0, 1, 2, 4]].abs().sum() == 0
    encoders, rest = worker.parameter_groups()
    assert encoders["lr"] == worker.settings.encoder_learning_rate and rest["lr"] == worker.settings.learning_rate
    ids = [id(p) for group in (encoders, rest) for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert any(p is model.query_encoder.get_input_embeddings().weight for p in encoders["params"])
    assert any(p is model.entity.weight for p in rest["params"]) and any(p is model.matcher.mlp[0].weight for p in rest["params"])


def test_the_candidates_degree_enters_not_the_targets(make_kb, tiny_encoder):
    """Two candidates with the same text and token but other degrees score differently, whichever is the target (no answer leak)."""
    names, descriptions = ("ann", "bob", "cat", "twin", "twin"), ("", "", "", "same", "same")
    train = [[0, 0, 3], [1, 0, 4], [2, 0, 4]]  # deg(3) = 1, deg(4) = 2
    worker = build(text_kb(make_kb, train=train, names=names, descriptions=descriptions), tiny_encoder)
    with torch.no_grad():
        worker.model.entity.weight[4] = worker.model.entity.weight[3]
    worker.modules().eval()
    with torch.no_grad():
        keys = worker._encode_keys(torch.tensor([3, 4]))
        torch.testing.assert_close(keys[0], keys[1])
        scored = worker.score(TAIL, torch.tensor([[0, 0]]), torch.tensor([[3, 4]]))[0]
        q = worker._entity_queries(TAIL, torch.tensor([[0, 0]]))[0][0]
    assert abs(scored[0] - scored[1]).item() > 1e-4
    expected = [hand_logit(worker, q, keys[0], 1, 1), hand_logit(worker, q, keys[0], 1, 2)]  # deg(0) = 1; each candidate's own
    assert scored.tolist() == pytest.approx(expected, abs=1e-5)
    # training's in-batch logits: swapping which twin is the target changes no score
    by_target = {}
    for target, other in ((3, 4), (4, 3)):
        with torch.no_grad():
            (tails, _), _ = worker.contrastive_logits(torch.tensor([[0, 0, target], [2, 0, other]]))
        logits, _, ids = tails
        by_target[target] = {int(c): logits[0, j].item() for j, c in enumerate(ids)}
    assert by_target[3] == pytest.approx(by_target[4], abs=1e-5)
    assert [by_target[3][3], by_target[3][4]] == pytest.approx(scored.tolist(), abs=1e-5)


def test_degrees_are_counted_on_train_triples_only(make_kb, tiny_encoder):
    kb = text_kb(make_kb, valid=[[4, 0, 3], [4, 1, 3]], test=[[4, 0, 0]])
    worker = build(kb, tiny_encoder)
    expected = torch.log1p(torch.tensor(degrees(TRAIN), dtype=torch.float32))
    torch.testing.assert_close(worker.model.log_degree, expected)
    assert worker.model.log_degree[4].item() == pytest.approx(math.log(3))  # not 6 with valid and test


def test_in_batch_keys_that_are_train_answers_are_positives(make_kb, tiny_encoder):
    worker = build(text_kb(make_kb), tiny_encoder)
    (tails, heads), _ = worker.contrastive_logits(torch.tensor([[0, 0, 1], [0, 0, 2]]))  # one query, two answers
    assert tails[2].tolist() == [1, 2] and tails[1].tolist() == [[True, True], [True, True]]
    assert heads[2].tolist() == [0] and heads[1].tolist() == [[True], [True]]  # the same head once
    (tails, heads), _ = worker.contrastive_logits(torch.tensor([[0, 0, 1], [1, 1, 3]]))
    assert tails[2].tolist() == [1, 3] and tails[1].tolist() == [[True, False], [False, True]]
    # (?, r0, 1) has the heads 0 (its own) and 3 (train triple (3, 0, 1), not in the batch): 3 is not a key here
    assert heads[2].tolist() == [0, 1] and heads[1].tolist() == [[True, False], [False, True]]
    (tails, heads), _ = worker.contrastive_logits(torch.tensor([[0, 0, 1], [3, 0, 1]]))
    assert heads[2].tolist() == [0, 3] and heads[1].tolist() == [[True, True], [True, True]]
    assert tails[0].shape == (2, 1) and heads[0].shape == (2, 2)
    loss = worker.train_loss(torch.tensor([[0, 0, 1], [3, 0, 1]]))
    assert math.isfinite(loss.item())


def test_self_negatives_add_the_batchs_given_entities_as_candidates(make_kb, tiny_encoder):
    """SimKGC's self-negatives: a query's own entity (and the batch's other given ones) among its candidates, a negative unless a train answer."""
    batch = torch.tensor([[0, 0, 1], [1, 1, 3]])
    worker = build(text_kb(make_kb), tiny_encoder, self_negatives=True)
    (tails, heads), _ = worker.contrastive_logits(batch)
    assert tails[2].tolist() == [1, 3, 0]  # the targets, then the givens 0 and 1 (1 is already a target)
    assert tails[1].tolist() == [[True, False, False], [False, True, False]]  # (0, r0) has the answers 1 and 2; its own 0 is a negative
    assert heads[2].tolist() == [0, 1, 3] and heads[1].tolist() == [[True, False, True], [False, True, False]]  # (3, r0, 1) is a train triple
    assert tails[0].shape == (2, 3) and heads[0].shape == (2, 3)
    (plain_tails, _), _ = build(text_kb(make_kb), tiny_encoder).contrastive_logits(batch)
    assert plain_tails[2].tolist() == [1, 3]  # off by default (the paper's in-batch targets only)
    # a self-loop in train makes the own entity a positive
    looped = build(text_kb(make_kb, train=[*TRAIN, [0, 0, 0]]), tiny_encoder, self_negatives=True)
    (tails, _), _ = looped.contrastive_logits(torch.tensor([[0, 0, 1]]))
    assert tails[2].tolist() == [1, 0] and tails[1].tolist() == [[True, True]]
    loss = worker.train_loss(batch)
    loss.backward()
    assert math.isfinite(loss.item()) and worker.model.entity.weight.grad[0].abs().sum() > 0


def test_the_loss_weights_negatives_by_a_detached_softmax_of_their_probabilities():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    positive = torch.tensor([[True, False, False, True], [True, True, True, True]])
    loss = contrastive_bce(logits, positive)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    w0 = math.exp(sig(0.0)) / (math.exp(sig(0.0)) + math.exp(sig(-1.0)))
    w1 = 1 - w0
    first = -(math.log(sig(2.0)) + math.log(sig(1.0))) / 2 - (w0 * math.log(sig(-0.0)) + w1 * math.log(sig(1.0)))
    second = -math.log(sig(1.0))  # only positives: no negative term
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    loss.backward()
    # d/dl of -w log sigmoid(-l) is w sigmoid(l) with w held fixed (detached), over 2 rows
    assert logits.grad[0, 1].item() == pytest.approx(w0 * sig(0.0) / 2, rel=1e-6)
    assert logits.grad[0, 2].item() == pytest.approx(w1 * sig(-1.0) / 2, rel=1e-6)
    assert logits.grad[0, 0].item() == pytest.approx(-(1 - sig(2.0)) / 2 / 2, rel=1e-6)


def test_the_memory_bank_adds_earlier_keys_detached(make_kb, tiny_encoder):
    names = tuple(f"n{i}" for i in range(8))
    train = [[0, 0, 1], [2, 0, 3], [4, 0, 5], [6, 0, 7], [0, 0, 5]]
    kb = text_kb(make_kb, train=train, names=names, descriptions=("",) * 8)
    worker = build(kb, tiny_encoder, memory_bank=2)
    plain = build(kb, tiny_encoder)

    def step(rows):
        loss = worker.train_loss(torch.tensor(rows))
        loss.backward()
        worker.updates += 1

    step([[0, 0, 1]])
    (tails, _), _ = worker.contrastive_logits(torch.tensor([[2, 0, 3]]))
    assert tails[2].tolist() == [3, 0, 1] and tails[1].tolist() == [[True, False, False]]  # the bank's 0 and 1: negatives
    (plain_tails, _), _ = plain.contrastive_logits(torch.tensor([[2, 0, 3]]))
    assert plain_tails[2].tolist() == [3]
    worker.train_loss(torch.tensor([[2, 0, 3]]))
    step([[2, 0, 3]])  # a second loss at one step replaces that step's entry
    assert [sorted(ids.tolist()) for _, ids, _ in worker._bank] == [[0, 1], [2, 3]]
    (tails, _), _ = worker.contrastive_logits(torch.tensor([[0, 0, 5]]))
    assert tails[2].tolist() == [5, 2, 3, 0, 1]  # newest first
    assert tails[1].tolist() == [[True, False, False, False, True]]  # (0, 0, 1) is a train triple: the bank's 1 is a positive
    assert all(not keys.requires_grad for _, _, keys in worker._bank)
    step([[4, 0, 5]])
    step([[6, 0, 7]])
    assert [sorted(ids.tolist()) for _, ids, _ in worker._bank_entries()] == [[4, 5], [6, 7]]  # the last two steps only


def test_a_students_step_encodes_each_distinct_query_and_key_once(make_kb, tiny_encoder):
    """A student pulls labels for its own batch's queries on candidates that overlap: the own loss and
    every entity request share one encoding of each distinct query and key (the values and gradients
    equal separate calls: the worker-type contract)."""
    worker = build(text_kb(make_kb), tiny_encoder)
    batch = torch.tensor([[0, 0, 1], [1, 1, 3]])
    requests = [
        (TAIL, batch[:, [0, 1]], torch.tensor([[1, 2, 3], [2, 3, 4]])),
        (HEAD, batch[:, [1, 2]], torch.tensor([[0, 1, 2], [0, 3, 4]])),
        (TAIL, torch.tensor([[2, 0]]), torch.tensor([[0, 1, 4]])),  # a query the batch does not ask
    ]
    encoded = collections.Counter()

    def counting(name):
        return lambda _, args, kwargs: encoded.update({name: kwargs["inputs_embeds"].shape[0]})

    worker.model.query_encoder.register_forward_pre_hook(counting("query"), with_kwargs=True)
    worker.model.key_encoder.register_forward_pre_hook(counting("key"), with_kwargs=True)
    own, scores = worker.train_scores(batch, requests)
    # queries (0, r0), (1, r1), (1, r0^-1), (3, r1^-1) and (2, r0); keys of entities 0-4
    assert encoded == {"query": 5, "key": 5}
    assert [tuple(s.shape) for s in scores] == [(2, 3), (2, 3), (1, 3)] and math.isfinite(own.item())
    encoded.clear()
    worker.train_loss(batch)
    worker.score(TAIL, *requests[0][1:])
    worker.score(HEAD, *requests[1][1:])
    assert encoded == {"query": 8, "key": 3 + 4 + 5}  # apart: 4 + 2 + 2 queries; keys {0, 1, 3}, {1, 2, 3, 4}, {0, 1, 2, 3, 4}


def test_without_degrees_the_matcher_sees_zeros(make_kb, tiny_encoder):
    worker = build(text_kb(make_kb), tiny_encoder, degrees=False)
    assert torch.count_nonzero(worker.model.log_degree) == 0
    worker.modules().eval()
    with torch.no_grad():
        q = worker._entity_queries(TAIL, torch.tensor([[0, 1]]))[0][0]
        keys = worker._encode_keys(torch.arange(len(NAMES)))
        scored = worker.score(TAIL, torch.tensor([[0, 1]]))[0]
        assert scored.tolist() == pytest.approx([hand_logit(worker, q, k, 0, 0) for k in keys], abs=1e-5)


def test_the_cosine_matcher_is_a_scaled_cosine_and_its_own_retrieval_product(make_kb, tiny_encoder):
    worker = build(text_kb(make_kb), tiny_encoder, matcher="cosine")
    matcher = worker.model.matcher
    assert matcher.log_scale.exp().item() == pytest.approx(20.0)
    worker.modules().eval()
    with torch.no_grad():
        q = worker._entity_queries(TAIL, torch.tensor([[2, 0]]))[0][0]
        keys = worker._encode_keys(torch.arange(len(NAMES)))
        scored = worker.score(TAIL, torch.tensor([[2, 0]]))[0]
        expected = [20.0 * torch.dot(q, k).item() / (q.norm() * k.norm()).item() for k in keys]
        assert scored.tolist() == pytest.approx(expected, abs=1e-4)
        proxy = matcher.retrieval_queries(q[None]) @ matcher.retrieval_keys(torch.cat([keys, torch.rand(len(NAMES), 1)], 1)).T
        torch.testing.assert_close(proxy[0], scored, atol=1e-4, rtol=1e-5)  # exact: nothing of the query alone is left out
    assert any(p is matcher.log_scale for p in worker.parameter_groups()[1]["params"])  # learned, at the rate of the non-encoder parts


def test_the_matchers_linear_part_is_the_retrieval_inner_product(make_kb, tiny_encoder):
    worker = build(text_kb(make_kb), tiny_encoder)
    matcher = worker.model.matcher
    torch.manual_seed(1)
    q, keys, log_degree = torch.randn(3, 32), torch.randn(4, 32), torch.rand(4)
    with torch.no_grad():
        proxy = matcher.retrieval_queries(q) @ matcher.retrieval_keys(torch.cat([keys, log_degree[:, None]], 1)).T
        features = torch.cat([q[:, None].expand(3, 4, 32), keys[None].expand(3, 4, 32)], -1)
        features = torch.cat([features, (q[:, None] - keys[None]), q[:, None] * keys[None], torch.full((3, 4, 1), 0.5), log_degree[None, :, None].expand(3, 4, 1)], -1)
        linear = matcher.mlp[0](features) @ matcher.mlp[2].weight[0]  # w2 . (first layer), no ReLU
    # equal up to a term of the query alone
    torch.testing.assert_close(proxy - proxy[:, :1], linear - linear[:, :1], atol=1e-5, rtol=1e-5)


def test_the_faiss_shortlist_recalls_the_exact_top_k(make_kb, tiny_encoder, monkeypatch):
    """The shortlist of 4k by the matcher's linear part, reranked, against the exact top k of a random matcher.

    The encoders are stubbed with random query and key tables (as test_scoring's random embeddings):
    an untrained tiny BERT ranks nearly every query alike, and a trained one ties many candidates.
    """
    num_entities, num_relations = 300, 3
    kb = text_kb(make_kb, train=[[h, 0, (h + 1) % num_entities] for h in range(num_entities)], names=tuple(f"n{i}" for i in range(num_entities)), descriptions=("",) * num_entities, relations=("a", "b", "c"))
    worker = build(kb, tiny_encoder, hidden=32, shortlist_factor=4)
    generator = torch.Generator().manual_seed(5)
    query_table, key_table = torch.randn(num_entities * 2 * num_relations, 32, generator=generator), torch.randn(num_entities, 32, generator=generator)
    monkeypatch.setattr(worker, "_queries", lambda given, tokens: query_table[given * 2 * num_relations + tokens])
    monkeypatch.setattr(worker, "_encode_keys", lambda entities: key_table[entities])
    worker.modules().eval()
    pool = torch.arange(num_entities)
    for kind in (TAIL, HEAD):
        queries = torch.stack([torch.randint(num_entities, (50,), generator=generator), torch.randint(num_relations, (50,), generator=generator)], 1)
        queries = queries if kind == TAIL else queries[:, [1, 0]]
        got = worker.top_candidates(kind, queries, pool, 10)
        with torch.no_grad():
            scores = worker.score(kind, queries, pool.expand(50, -1))
        assert torch.equal(scores.gather(1, got), scores.gather(1, got).sort(dim=1, descending=True).values)  # reranked: best first
        exact = scores.topk(10, dim=1).indices
        recall = sum(len(set(a) & set(b)) for a, b in zip(got.tolist(), exact.tolist())) / exact.numel()
        assert recall >= 0.7, (kind, recall)  # a random shortlist of 40 of 300 recalls 0.13


def test_it_learns_to_rank_its_training_triples(make_kb, tiny_encoder, one_thread):
    names = ("apple", "banana", "cherry", "dog", "eagle", "falcon", "grape", "horse", "iris", "jaguar")
    rng = np.random.default_rng(0)
    train = np.unique(np.stack([rng.integers(0, 10, 30), rng.integers(0, 2, 30), rng.integers(0, 10, 30)], 1), axis=0)
    kb = text_kb(make_kb, train=train, names=names, descriptions=tuple(f"a thing called {n}" for n in names), relations=("likes", "eats"))
    worker = build(kb, tiny_encoder, hidden=0, learning_rate=1e-2, encoder_learning_rate=1e-3)
    known = KnownAnswers(kb.train, 10, 2)

    def mrr():
        worker.modules().eval()
        result = evaluate_ranking(worker.score, kb.train, known, batch_size=64)
        worker.modules().train()
        return result.mrr

    before = mrr()
    optimizer = worker.optimizer()
    triples = torch.from_numpy(train)
    for _ in range(250):
        loss = worker.train_loss(triples[torch.randperm(len(triples))[:16]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        worker.updates += 1
    after = mrr()
    assert after > 0.7 and after > before + 0.3, (before, after)  # chance: about 0.3 with 10 entities


def test_embeddings_are_the_entity_keys_and_relation_tokens(make_kb, tiny_encoder):
    worker = build(text_kb(make_kb), tiny_encoder)
    exported = worker.embeddings()
    assert worker.model.training  # back in train mode
    worker.modules().eval()
    with torch.no_grad():
        keys = worker._encode_keys(torch.arange(len(NAMES)))
    assert exported["entity"].shape == (len(NAMES), 32) and exported["entity"].dtype == np.float32
    np.testing.assert_allclose(exported["entity"], keys.numpy(), atol=1e-6)
    np.testing.assert_array_equal(exported["relation"], worker.model.relation.weight[: len(RELATIONS)].detach().numpy())


def test_a_kb_without_texts_or_a_bad_setting_is_refused_by_name(make_kb, tiny_encoder, tmp_path):
    cls = WORKER_TYPES.get("lmke")
    with pytest.raises(ConfigError, match="entity_text.tsv"):
        cls(make_kb(3, 1), cls.validate_settings({"encoder": tiny_encoder, "device": "cpu"}))
    with pytest.raises(ConfigError, match="settings.encoder"):
        cls.check_kb(text_kb(make_kb), cls.validate_settings({"encoder": str(tmp_path)}))
    with pytest.raises(ConfigError, match="settings.max_length"):
        build(text_kb(make_kb), tiny_encoder, max_length=200)  # the tiny BERT has 128 positions
    with pytest.raises(Exception, match="memory_bank"):
        cls.validate_settings({"memory_bank": -1})


def test_a_step_encoding_more_than_one_pass_recomputes_its_activations_and_keeps_the_same_gradients(make_kb, tiny_encoder, same_gradients_in_passes):
    """A student's relation queries encode one query per candidate relation: with gradients, each
    pass of ``eval_batch_size`` sequences keeps only its outputs (the encoder runs again in the
    backward pass), and the gradients equal those of one pass holding every activation."""
    queries = torch.tensor([[0, 4], [3, 1], [2, 0]])

    def step(eval_batch_size):
        torch.manual_seed(0)
        worker = build(text_kb(make_kb), tiny_encoder, eval_batch_size=eval_batch_size)
        return worker, worker.model.query_encoder, lambda: worker.score(RELATION, queries)

    # 3 queries x 2 relations: one pass of 64, or three passes of 2, each run again backward
    same_gradients_in_passes(step, whole=64, passes=2, runs=(1, 6))
