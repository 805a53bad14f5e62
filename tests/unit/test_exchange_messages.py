"""The SoftLabels wire format: a lossless round trip, compact ids, one row for shared candidates, clear errors, messages within a bound."""

from __future__ import annotations

import numpy as np
import pytest

from kdmkb.kb_worker import exchange
from kdmkb.kb_worker.worker_types import QueryKind
from kdmkb.protos.kdmkb.exchange.v1 import soft_labels_pb2 as pb
from kdmkb.services.errors import LimitError


def lesson(*blocks: exchange.SoftLabelBlock) -> exchange.SoftLabels:
    return exchange.SoftLabels("job-1", 3, "teacher", "student", blocks)


def relation_block(rows: int = 50, relations: int = 237) -> exchange.SoftLabelBlock:
    rng = np.random.default_rng(0)
    candidates = np.broadcast_to(np.arange(relations), (rows, relations))
    return exchange.SoftLabelBlock(QueryKind.RELATION, 1, rng.integers(0, 1000, (rows, 2)), candidates, rng.standard_normal((rows, relations)).astype(np.float32))


def entity_block(rows: int = 50, width: int = 20, high: int = 40_000) -> exchange.SoftLabelBlock:
    rng = np.random.default_rng(1)
    return exchange.SoftLabelBlock(QueryKind.TAIL, 0, rng.integers(0, high, (rows, 2)), rng.integers(0, high, (rows, width)), rng.standard_normal((rows, width)).astype(np.float32))


def test_round_trip_is_lossless():
    sent = lesson(entity_block(), relation_block())
    got = exchange.decode(exchange.encode(sent))
    assert (got.job_id, got.round, got.teacher, got.student) == ("job-1", 3, "teacher", "student")
    for a, b in zip(sent.blocks, got.blocks):
        assert (a.kind, a.step) == (b.kind, b.step)
        np.testing.assert_array_equal(a.queries, b.queries)
        np.testing.assert_array_equal(a.candidates, b.candidates)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_shared_candidates_travel_once_and_ids_as_int32():
    """Relation queries over 237 relations: 4 bytes per score instead of 12 per (int64 id, score)."""
    block = relation_block(rows=100)
    message = pb.SoftLabels.FromString(exchange.encode(lesson(block)))
    candidates = message.blocks[0].candidates
    assert list(candidates.shape) == [1, 237]
    assert candidates.dtype == pb.Tensor.DTYPE_INT32
    assert message.ByteSize() < 100 * 237 * 4 * 1.05  # the scores, plus headers and one id row


def test_distinct_candidate_rows_are_all_sent():
    message = pb.SoftLabels.FromString(exchange.encode(lesson(entity_block(rows=30, width=7))))
    assert list(message.blocks[0].candidates.shape) == [30, 7]


def test_ids_beyond_int32_fall_back_to_int64():
    block = entity_block(rows=4, width=3, high=2**40)
    message = pb.SoftLabels.FromString(exchange.encode(lesson(block)))
    assert message.blocks[0].candidates.dtype == pb.Tensor.DTYPE_INT64
    np.testing.assert_array_equal(exchange.decode(message.SerializeToString()).blocks[0].candidates, block.candidates)


def test_malformed_block_is_refused_with_the_teacher_named():
    message = pb.SoftLabels.FromString(exchange.encode(lesson(entity_block(rows=5, width=4))))
    exchange.fill_tensor(message.blocks[0].candidates, np.zeros((1, 3), np.int32))  # neither [5, 4] nor [1, 4]
    with pytest.raises(ValueError, match="malformed SoftLabels block from 'teacher'"):
        exchange.decode(message.SerializeToString())


def test_a_tail_bucket_is_one_score_column_more_than_the_candidates():
    rng = np.random.default_rng(2)
    candidates = np.broadcast_to(np.arange(6), (5, 6))  # one list shared by the block's queries
    block = exchange.SoftLabelBlock(QueryKind.HEAD, 0, rng.integers(0, 9, (5, 2)), candidates, rng.standard_normal((5, 7)).astype(np.float32), tail=True)
    message = pb.SoftLabels.FromString(exchange.encode(lesson(block)))
    assert message.blocks[0].tail_bucket and list(message.blocks[0].candidates.shape) == [1, 6]
    got = exchange.decode(message.SerializeToString()).blocks[0]
    assert got.tail and got.candidates.shape == (5, 6) and got.scores.shape == (5, 7)
    message.blocks[0].tail_bucket = False  # 7 scores for 6 candidates without a bucket
    with pytest.raises(ValueError, match="malformed SoftLabels block from 'teacher'"):
        exchange.decode(message.SerializeToString())


# -- messages of at most max_label_bytes ---------------------------------------------------------
def one_query(kind: QueryKind, step: int) -> exchange.SoftLabelBlock:
    """A block of 52 serialised bytes in a message (step >= 1): kind 2, step 2, queries 18, candidates 14, scores 14; its field tag and length 2."""
    return exchange.SoftLabelBlock(kind, step, np.array([[1, 2]]), np.array([[3]]), np.array([[0.5]], np.float32))


def test_messages_are_cut_between_steps_each_within_the_bound_and_as_few_as_in_step_order():
    """Steps 1..5 of 52, 52, 104 (two blocks), 52, 52 bytes after a 9-byte header ("j", "t", "s"; round 0 is not written)."""
    labels = exchange.SoftLabels("j", 0, "t", "s", (*(one_query(QueryKind.TAIL, s) for s in range(1, 6)), one_query(QueryKind.HEAD, 3)))
    whole = exchange.encode(labels)
    assert len(whole) == 9 + 6 * 52
    assert exchange.encode_messages(labels, len(whole)) == [whole]
    # 165 = 9 + 3 * 52: steps 1-2 (113), then step 3 does not fit; steps 3-4 (165), then step 5 (61). Three is the fewest
    # in step order: any cut in two leaves 9 + 208 bytes or more on one side.
    messages = exchange.encode_messages(labels, 165)
    assert [len(m) for m in messages] == [113, 165, 61]
    assert sum(map(len, messages)) == len(whole) + 2 * 9  # each message repeats the header
    decoded = [exchange.decode(m) for m in messages]
    assert all((d.job_id, d.round, d.teacher, d.student) == ("j", 0, "t", "s") for d in decoded)
    assert [[(b.step, b.kind) for b in d.blocks] for d in decoded] == [[(1, QueryKind.TAIL), (2, QueryKind.TAIL)], [(3, QueryKind.TAIL), (3, QueryKind.HEAD), (4, QueryKind.TAIL)], [(5, QueryKind.TAIL)]]
    # their union is the one message's blocks, byte for byte
    assert b"".join(m[9:] for m in messages) == whole[9:]
    # 164: steps 3 and 4 no longer fit together, steps 4 and 5 do
    assert [len(m) for m in exchange.encode_messages(labels, 164)] == [113, 113, 113]
    assert exchange.encode_messages(exchange.SoftLabels("j", 0, "t", "s", ()), 9) == [exchange.encode(exchange.SoftLabels("j", 0, "t", "s", ()))]


def test_a_step_over_the_bound_alone_is_refused_naming_the_limit_the_kbs_and_the_size():
    labels = exchange.SoftLabels("j", 0, "t", "s", (one_query(QueryKind.TAIL, 1), one_query(QueryKind.HEAD, 1), one_query(QueryKind.TAIL, 2)))
    assert [len(m) for m in exchange.encode_messages(labels, 113)] == [113, 61]
    with pytest.raises(LimitError, match=r"one step's soft labels from KB 't' for 's' are 113 bytes, over the server's limit max_label_bytes = 112"):
        exchange.encode_messages(labels, 112)
