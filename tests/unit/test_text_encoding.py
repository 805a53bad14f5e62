"""``encode_in_passes``: what both text worker types encode through."""

from __future__ import annotations

import torch
from torch import nn

from kdmkb.kb_worker.worker_types.text import encode_in_passes


def _passes(lengths, pass_size, encode, rows):
    return encode_in_passes(lengths, pass_size, lambda chunk: (rows[torch.tensor(chunk)],), encode)


def test_rows_come_back_in_the_sequences_order_and_passes_go_by_length():
    rows = torch.arange(5.0).unsqueeze(1)
    seen = []

    def encode(x):
        seen.append(x.squeeze(1).tolist())
        return x * 10

    with torch.no_grad():
        out = _passes([3, 1, 5, 2, 4], 2, encode, rows)
    assert seen == [[1.0, 3.0], [0.0, 4.0], [2.0]]  # lengths 1, 2 | 3, 4 | 5
    assert out.squeeze(1).tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]


def test_a_recomputed_pass_replays_its_dropout():
    """Under gradients the passes are recomputed in the backward pass; their dropout masks must be
    the ones of the forward pass, so the gradients equal those of the same passes kept whole."""
    layer = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    rows = torch.randn(7, 4)

    def gradients(encode_all):
        layer.zero_grad()
        torch.manual_seed(1)
        encode_all().square().sum().backward()
        return [p.grad.clone() for p in layer.parameters()]

    lengths = list(range(7))
    recomputed = gradients(lambda: _passes(lengths, 3, layer, rows))
    kept = gradients(lambda: torch.cat([layer(rows[i : i + 3]) for i in range(0, 7, 3)]))
    for a, b in zip(recomputed, kept):
        torch.testing.assert_close(a, b)
