"""DSoM's losses (Zhao et al. 2025, eq. 4-12) as pure functions: reinforced teacher combination and neighbour-decoupled KD.

The teacher-combining loss and the ``dsom`` strategy are built on these; each is pinned by a unit
test against hand-computed values.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

REWARD_BETTER, REWARD_WORSE = 1.0, -10.0


def teacher_subsets(teachers: int) -> torch.Tensor:
    """The ``2^M - 1`` non-empty subsets of ``M`` teachers as a ``bool [S, M]`` mask, smallest first (the policy's actions)."""
    rows = [subset for size in range(1, teachers + 1) for subset in itertools.combinations(range(teachers), size)]
    mask = torch.zeros(len(rows), teachers, dtype=torch.bool)
    for row, subset in enumerate(rows):
        mask[row, list(subset)] = True
    return mask


def combined_logits(teacher_logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Eq. 7: per query, the mean logits of the chosen teachers. ``teacher_logits [M, q, E]``, ``chosen bool [q, M]`` -> ``[q, E]``."""
    weights = chosen.T.float()[..., None]  # [M, q, 1]
    return (teacher_logits * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1)


def rewards(combined: torch.Tensor, student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 8: +1 where the combined teacher's cross-entropy on the target is lower than the student's, else -10."""
    better = F.cross_entropy(combined, targets, reduction="none") < F.cross_entropy(student, targets, reduction="none")
    return torch.where(better, torch.tensor(REWARD_BETTER), torch.tensor(REWARD_WORSE))


def reinforce_loss(log_policy: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Eq. 9-10, ``L_RC = -mean((r - b) log pi(a | s))``: reward and baseline detached, so only the policy learns from it."""
    advantage = (reward - baseline).detach()
    return -(advantage * log_policy.gather(1, actions[:, None]).squeeze(1)).mean()


def ndkd_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    neighbours: torch.Tensor,
    *,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    neighbour_mass: str = "mean",
) -> torch.Tensor:
    """Eq. 11-12: neighbour-decoupled KD, mean over queries, scaled by ``temperature**2``.

    ``neighbours bool [q, E]`` marks each query's train answers, the target included. NEKD is the
    binary KL on the neighbours' probability (``mean``: the paper's mean of their probabilities;
    ``sum``: their total, the consistent generalisation of DKD's target probability); NNKD the KL
    over the non-neighbours, renormalised among themselves.
    """
    teacher = torch.softmax(teacher_logits / temperature, dim=-1)
    student = torch.softmax(student_logits / temperature, dim=-1)
    count = neighbours.sum(dim=-1).clamp(min=1)
    if neighbour_mass == "mean":
        teacher_mass = (teacher * neighbours).sum(-1) / count
        student_mass = (student * neighbours).sum(-1) / count
    elif neighbour_mass == "sum":
        teacher_mass, student_mass = (teacher * neighbours).sum(-1), (student * neighbours).sum(-1)
    else:
        raise ValueError(f"neighbour_mass: 'mean' or 'sum', got {neighbour_mass!r}")
    eps = torch.finfo(teacher.dtype).tiny
    binary_teacher = torch.stack([teacher_mass, 1 - teacher_mass], dim=-1).clamp(min=eps)
    binary_student = torch.stack([student_mass, 1 - student_mass], dim=-1).clamp(min=eps)
    nekd = (binary_teacher * (binary_teacher.log() - binary_student.log())).sum(-1)
    # non-neighbours renormalised: a log-softmax over the non-neighbour logits alone
    masked_teacher = (teacher_logits / temperature).masked_fill(neighbours, float("-inf"))
    masked_student = (student_logits / temperature).masked_fill(neighbours, float("-inf"))
    log_teacher = torch.log_softmax(masked_teacher, dim=-1)
    log_student = torch.log_softmax(masked_student, dim=-1)
    nnkd = torch.where(neighbours, torch.zeros_like(log_teacher), log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    return (alpha * nekd + beta * nnkd).mean() * temperature**2
