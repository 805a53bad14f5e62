"""Score functions as (query vector, key vector, metric): one place for every structural model's math.

Every structural model reduces to ``score(h, r, t) = sim(query(h, r), key(t))`` for tail queries
and ``sim(query'(r, t), key(h))`` for head queries, where ``sim`` is a negative distance or an
inner product. Writing the models this way lets ranking, negative sampling and the faiss
candidate search share one implementation. Higher scores are always better.
"""

from __future__ import annotations

import torch

METRICS = ("l1", "l2", "ip", "complex_l1")


def complex_product(a: torch.Tensor, b: torch.Tensor, *, conjugate_a: bool = False) -> torch.Tensor:
    """Elementwise product of complex vectors stored as ``[real | imaginary]``."""
    a_re, a_im = a.chunk(2, dim=-1)
    b_re, b_im = b.chunk(2, dim=-1)
    if conjugate_a:
        a_im = -a_im
    return torch.cat([a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re], dim=-1)


def matched_scores(queries: torch.Tensor, keys: torch.Tensor, metric: str) -> torch.Tensor:
    """Scores of broadcast pairs: ``queries[..., d]`` against ``keys[..., d]`` -> ``[...]``."""
    if metric == "ip":
        return (queries * keys).sum(-1)
    difference = queries - keys
    if metric == "l1":
        return -difference.abs().sum(-1)
    if metric == "l2":
        return -torch.linalg.vector_norm(difference, dim=-1)
    if metric == "complex_l1":
        real, imaginary = difference.chunk(2, dim=-1)
        return -torch.sqrt(real * real + imaginary * imaginary + 1e-12).sum(-1)
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def all_pairs_scores(queries: torch.Tensor, keys: torch.Tensor, metric: str, *, chunk_elements: int = 2**24) -> torch.Tensor:
    """Scores of every query ``[q, d]`` against every key ``[n, d]`` -> ``[q, n]``.

    Uses a matrix product or ``cdist`` where the metric allows it; other metrics are evaluated
    in key chunks of at most ``chunk_elements`` broadcast elements to bound memory. The chunks
    write into one preallocated result: a list of small results kept alive between the chunks'
    large temporaries fragmented the heap (RotatE on WN18RR: 8.6 GB peak for 256 queries, now 0.7).
    """
    if metric == "ip":
        return queries @ keys.T
    if metric == "l2":
        return -torch.cdist(queries, keys, p=2.0, compute_mode="use_mm_for_euclid_dist")
    if metric == "l1":
        return -torch.cdist(queries, keys, p=1.0)
    rows = max(1, chunk_elements // max(1, queries.shape[0] * queries.shape[1]))
    scores = queries.new_empty(queries.shape[0], keys.shape[0])
    for start in range(0, keys.shape[0], rows):
        scores[:, start : start + rows] = matched_scores(queries[:, None, :], keys[None, start : start + rows, :], metric)
    return scores
