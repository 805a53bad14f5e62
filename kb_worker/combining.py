"""How a student combines its teachers' soft labels into one distillation loss: an extension point by name.

Every row a student learns from keeps its teacher's identity up to here, so that a combination
may weigh teachers per query (DSoM's reinforced selection) or, as KD-MKB does, average their KLs.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from kdmkb.kb_worker.losses import distillation_kl
from kdmkb.kb_worker.worker_types.base import QueryKind
from kdmkb.services.registry import Registry


@dataclass(frozen=True)
class LabelledRows:
    """Rows of one query kind and candidate width from a step's soft labels, each tagged with its teacher (local ids)."""

    kind: QueryKind
    queries: torch.Tensor  # [n, 2]
    candidates: torch.Tensor  # [n, c]
    teacher_logits: torch.Tensor  # [n, c]
    teacher: torch.Tensor  # [n]: index into StepLessons.teachers


@dataclass(frozen=True)
class StepLessons:
    """Everything one training step of a student learns from its teachers."""

    teachers: tuple[str, ...]
    weights: torch.Tensor  # [len(teachers)]: each teacher's weight in the round's plan
    groups: tuple[LabelledRows, ...]


class CombinationSettings(BaseModel):
    """Settings of a teacher combination (none by default)."""

    model_config = ConfigDict(extra="forbid")


class TeacherCombination(abc.ABC):
    """Turns a step's lessons and the student's logits on the same candidates into the KD loss."""

    settings_model: ClassVar[type[CombinationSettings]] = CombinationSettings

    def __init__(self, settings: CombinationSettings, *, temperature: float, relation_weight: float) -> None:
        self.settings = settings
        self.temperature = temperature
        self.relation_weight = relation_weight

    def modules(self) -> torch.nn.Module | None:
        """Learned parts (e.g. a teacher-selection policy): the student optimises and checkpoints them."""
        return None

    @abc.abstractmethod
    def loss(self, lessons: StepLessons, student_logits: list[torch.Tensor]) -> torch.Tensor:
        """The distillation loss; ``student_logits[i]`` scores ``lessons.groups[i]``'s candidates."""


COMBINATIONS: Registry[type[TeacherCombination]] = Registry("teacher combination")


@COMBINATIONS.register("mean-kl")
class MeanKL(TeacherCombination):
    """KD-MKB eq. 5: the mean over the step's teachers of (entity KL + relation_weight x relation KL).

    Each KL is a mean over that teacher's rows of the step; a plan's edge weight scales its
    teacher's term (1 everywhere is eq. 5). Rows of every teacher go through one KL per group.
    """

    def loss(self, lessons: StepLessons, student_logits: list[torch.Tensor]) -> torch.Tensor:
        count = len(lessons.teachers)
        rows = torch.zeros(count, 2, device=lessons.weights.device)  # per teacher: entity rows, relation rows
        for group in lessons.groups:
            rows[:, int(group.kind == QueryKind.RELATION)] += torch.bincount(group.teacher, minlength=count)
        total = torch.zeros((), device=lessons.weights.device)
        for group, logits in zip(lessons.groups, student_logits, strict=True):
            relation = group.kind == QueryKind.RELATION
            per_teacher = lessons.weights * (self.relation_weight if relation else 1.0) / (count * rows[:, int(relation)].clamp(min=1))
            total = total + distillation_kl(group.teacher_logits, logits, self.temperature, weights=per_teacher[group.teacher])
        return total


def make_combination(name: str, settings: dict, *, temperature: float, relation_weight: float) -> TeacherCombination:
    combination = COMBINATIONS.get(name)
    return combination(combination.settings_model.model_validate(settings or {}), temperature=temperature, relation_weight=relation_weight)
