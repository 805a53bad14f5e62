"""One candidate row shared by every query: each helper equals its plain counterpart on a copy per query, and keeps the row shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdmkb.kb_worker.shared_lists import concat_rows, is_one_list, is_shared, map_ids, shared, take_rows

ROW = [4, 0, 3]


@pytest.mark.parametrize("make", [torch.tensor, np.asarray])
def test_a_row_expanded_for_several_queries_is_shared_and_a_copy_is_not(make):
    row = make([ROW])
    view = shared(row, 5)
    assert view.shape == (5, 3) and is_shared(view)
    copy = view.contiguous() if isinstance(view, torch.Tensor) else np.ascontiguousarray(view)
    assert not is_shared(copy) and (copy == make([ROW] * 5)).all()
    assert not is_shared(shared(row, 1))  # one query: nothing shared
    assert not is_shared(make(ROW))  # not a per-query list


@pytest.mark.parametrize("make", [torch.tensor, np.asarray])
def test_one_list_for_every_query_is_a_single_row_or_a_shared_view_but_not_equal_copies(make):
    assert is_one_list(make([ROW])) and is_one_list(shared(make([ROW]), 4))
    assert not is_one_list(make([ROW, ROW]))  # equal lists, but a copy per query: scored per query
    assert not is_one_list(make([ROW, [4, 0, 2]]))


@pytest.mark.parametrize("make", [torch.tensor, np.asarray])
def test_taking_rows_of_a_shared_list_gives_the_rows_of_its_copy_still_shared(make):
    view = shared(make([ROW]), 4)
    copy = make([ROW] * 4)
    for index in (make([True, False, True, True]), make([3, 1])):
        taken = take_rows(view, index)
        assert is_shared(taken) and (taken == copy[index]).all() and taken.shape == copy[index].shape
    rows = make([[1, 2], [3, 4], [5, 6]])
    assert (take_rows(rows, make([2, 0])) == make([[5, 6], [1, 2]])).all()  # not shared: plain indexing


def test_an_id_map_maps_a_shared_row_once():
    table = np.array([10, 11, 12, 13, 14])
    calls = []

    def mapping(ids):
        calls.append(ids.shape)
        return table[ids]

    view = shared(np.asarray([ROW]), 6)
    mapped = map_ids(view, mapping)
    assert calls == [(1, 3)] and is_shared(mapped) and (mapped == table[np.asarray([ROW] * 6)]).all()
    assert (map_ids(np.asarray([ROW, ROW[::-1]]), mapping) == table[np.asarray([ROW, ROW[::-1]])]).all()


def test_joining_lists_shares_only_one_and_the_same_row():
    row = torch.tensor([ROW])
    joined = concat_rows([shared(row, 2), row, shared(row, 3)])
    assert is_shared(joined) and torch.equal(joined, torch.tensor([ROW] * 6))
    other = concat_rows([shared(row, 2), shared(torch.tensor([[4, 0, 2]]), 2)])  # another row: a plain join
    assert not is_shared(other) and torch.equal(other, torch.tensor([ROW, ROW, [4, 0, 2], [4, 0, 2]]))
    assert torch.equal(concat_rows([torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6]])]), torch.tensor([[1, 2], [3, 4], [5, 6]]))
