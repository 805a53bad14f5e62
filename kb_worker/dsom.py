"""DSoM's losses (Zhao et al. 2025, eq. 4-12) as pure functions: reinforced teacher combination and neighbour-decoupled KD.

The teacher-combining loss and the ``dsom`` strategy are built on these; each is pinned by a unit
test against hand-computed values.
"""

from __future__ import annotations

import itertools
import math

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


# -- the teacher-selection policy (eq. 5-6) --------------------------------------------------------
def full_state(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 5: every teacher's distribution over the candidates, concatenated: ``[M, q, c]`` -> ``[q, M c]``."""
    return torch.softmax(teacher_logits, dim=-1).transpose(0, 1).flatten(1)


def compact_state_width(teachers: int, top_m: int) -> int:
    return teachers * (top_m + 3)


def compact_state(teacher_logits: torch.Tensor, target_columns: torch.Tensor, neighbours: torch.Tensor, top_m: int) -> torch.Tensor:
    """Per teacher: its ``top_m`` largest probabilities, its entropy over ``log c``, the target's probability and the neighbours' mass.

    ``[M, q, c]`` -> ``[q, M (top_m + 3)]``: a width that does not grow with the KB (eq. 5's is ``M |E|``).
    """
    probabilities = torch.softmax(teacher_logits, dim=-1)
    width = probabilities.shape[-1]
    top = probabilities.topk(min(top_m, width), dim=-1).values
    top = F.pad(top, (0, top_m - top.shape[-1]))
    entropy = -(probabilities * torch.log_softmax(teacher_logits, dim=-1)).sum(-1, keepdim=True) / math.log(max(width, 2))
    target = probabilities.gather(-1, target_columns[None, :, None].expand(probabilities.shape[0], -1, 1))
    mass = (probabilities * neighbours).sum(-1, keepdim=True)
    return torch.cat([top, entropy, target, mass], dim=-1).transpose(0, 1).flatten(1)


class PolicyNetwork(torch.nn.Module):
    """Eq. 6: an MLP with one ReLU hidden layer from a query's state to logits over the ``2^M - 1`` teacher subsets."""

    def __init__(self, state_width: int, hidden: int, actions: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(state_width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, actions))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.layers(state), dim=-1)


# -- fixed selections (Table 2) --------------------------------------------------------------------
def confident_teacher(teacher_logits: torch.Tensor) -> torch.Tensor:
    """ConfTeacher: per query the teacher with the largest maximum probability, as a ``bool [q, M]`` choice."""
    confidence = torch.softmax(teacher_logits, dim=-1).amax(dim=-1)  # [M, q]
    return F.one_hot(confidence.argmax(dim=0), teacher_logits.shape[0]).bool()


def best_subset(teacher_logits: torch.Tensor, target_columns: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
    """Per query the subset (a row of ``subsets``) whose combined teacher has the lowest cross-entropy on the target.

    With the single-teacher rows of :func:`teacher_subsets` only, this is BestTeacher; with all, BestStrategy.
    """
    losses = torch.stack([F.cross_entropy(combined_logits(teacher_logits, subset.expand(teacher_logits.shape[1], -1)), target_columns, reduction="none") for subset in subsets])
    return subsets[losses.argmin(dim=0)]
