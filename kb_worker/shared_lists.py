"""One candidate list shared by every query, kept as one row from the teacher's scores to the student's loss.

A full answer lists every shared entity for every query: on FB15k-237 a step of 2,000 queries
would be 29M candidate ids, built, mapped between id spaces, copied per step and compared, for
what is one row of 14,541. So such a list travels as a view whose rows all alias one row (torch
``expand``, numpy ``broadcast_to``: stride 0), and the functions here keep it one: the exchange
sends the row once, id maps map the row, and selecting or joining rows expands the row again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Rows = np.ndarray | torch.Tensor


def is_shared(rows: Rows) -> bool:
    """Whether the 2-d ``rows`` is one row seen by several queries (a stride-0 view)."""
    if rows.ndim != 2 or rows.shape[0] < 2:
        return False
    return (rows.stride(0) if isinstance(rows, torch.Tensor) else rows.strides[0]) == 0


def is_one_list(rows: Rows) -> bool:
    """Whether every query of the 2-d ``rows`` has the same one list: a single row, or a shared view of one."""
    return rows.shape[0] == 1 or is_shared(rows)


def shared(row: Rows, count: int) -> Rows:
    """``row [1, c]`` (or ``[c]``) as the candidates of ``count`` queries, without a copy."""
    row = row.reshape(1, -1)
    return row.expand(count, -1) if isinstance(row, torch.Tensor) else np.broadcast_to(row, (count, row.shape[1]))


def take_rows(rows: Rows, index: Rows) -> Rows:
    """``rows[index]`` (a boolean mask or row ids) that stays a shared view when ``rows`` is one."""
    if not is_shared(rows):
        return rows[index]
    boolean = index.dtype == torch.bool if isinstance(index, torch.Tensor) else index.dtype == np.bool_
    count = int(index.sum()) if boolean else len(index)
    return shared(rows[:1], count)


def map_ids(rows: Rows, mapping: Callable[[Rows], Rows]) -> Rows:
    """``mapping(rows)`` for an id map applied element-wise; a shared view maps its one row."""
    return shared(mapping(rows[:1]), rows.shape[0]) if is_shared(rows) else mapping(rows)


def concat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts)``, a shared view when every part shares one and the same row."""
    if parts and all(is_one_list(p) for p in parts) and all(torch.equal(p[:1], parts[0][:1]) for p in parts[1:]):
        return shared(parts[0][:1], sum(p.shape[0] for p in parts))
    return torch.cat(parts)
