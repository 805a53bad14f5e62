"""Training and distillation losses: self-adversarial negative sampling, logistic (KD-MKB eq. 4), KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def self_adversarial_loss(
    positive: torch.Tensor, negative: torch.Tensor, valid: torch.Tensor | None = None, *, temperature: float = 1.0
) -> torch.Tensor:
    """RotatE's negative-sampling loss (Sun et al. 2019, eq. 5) on margin-shifted logits.

    ``positive`` is ``[b]``, ``negative`` ``[b, k]`` (logits: higher means more plausible);
    ``valid`` masks out negatives that are in fact true triples. Negatives are weighted by a
    detached softmax of their logits at ``temperature`` (0 gives the uniform mean).
    """
    if valid is None:
        valid = torch.ones_like(negative, dtype=torch.bool)
    with torch.no_grad():
        weights = torch.softmax((temperature * negative).masked_fill(~valid, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # rows whose negatives are all masked
    positive_term = -F.logsigmoid(positive)
    negative_term = -(weights * F.logsigmoid(-negative)).sum(dim=1)
    return (positive_term + negative_term).mean() / 2


def logistic_loss(positive: torch.Tensor, negative: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """KD-MKB eq. 4: ``log(1 + exp(-y f))`` over positives (y=1) and negatives (y=-1), per positive."""
    if valid is None:
        valid = torch.ones_like(negative, dtype=torch.bool)
    counts = valid.sum(dim=1).clamp(min=1)
    negative_term = (F.softplus(negative) * valid).sum(dim=1) / counts
    return (F.softplus(-positive) + negative_term).mean()


def distillation_kl(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0, *, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``KL(teacher || student)`` of the softmaxes over each row's candidates.

    The mean over rows, or the ``weights``-weighted sum. Scaled by ``temperature**2`` (Hinton
    et al. 2015) so that its gradient keeps its size when the temperature changes.
    """
    teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    student = torch.log_softmax(student_logits / temperature, dim=-1)
    per_row = (teacher.exp() * (teacher - student)).sum(dim=-1)
    total = per_row.mean() if weights is None else (weights * per_row).sum()
    return total * temperature**2


EMPTY_BUCKET = 1000.0


def with_tail_bucket(scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``scores [q, n]`` at ``columns [q, c]``, then one tail bucket: the log of the summed ``exp`` of every other column.

    A softmax over the ``[q, c + 1]`` result is the distribution over the listed candidates plus
    the total mass of the rest: a compact answer that keeps every row's normalisation.
    """
    listed = scores.gather(1, columns)
    rest = torch.ones_like(scores, dtype=torch.bool).scatter(1, columns, False)
    empty = ~rest.any(dim=1, keepdim=True)
    mass = torch.where(rest | empty, scores, float("-inf")).logsumexp(dim=1, keepdim=True)
    # every column listed: an empty bucket, a finite logit EMPTY_BUCKET below the row's least (sums and means of logits stay finite)
    floor = listed.detach().amin(dim=1, keepdim=True) - EMPTY_BUCKET
    return torch.cat([listed, torch.where(empty, floor, mass)], dim=1)
