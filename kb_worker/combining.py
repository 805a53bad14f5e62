"""How a student combines its teachers' soft labels into one distillation loss: an extension point by name.

Every row a student learns from keeps its teacher's identity up to here, so that a combination
may weigh teachers per query (DSoM's reinforced selection) or, as KD-MKB does, average their KLs.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kdmkb.kb_worker import dsom
from kdmkb.kb_worker.alignment_view import QUERY_COLUMNS
from kdmkb.kb_worker.data import KnowledgeBase
from kdmkb.kb_worker.losses import distillation_kl
from kdmkb.kb_worker.ranking import KnownAnswers
from kdmkb.kb_worker.shared_lists import take_rows
from kdmkb.kb_worker.worker_types.base import QueryKind
from kdmkb.services.errors import ConfigError, DataError
from kdmkb.services.registry import Registry


@dataclass(frozen=True)
class LabelledRows:
    """Rows of one query kind and candidate width from a step's soft labels, each tagged with its teacher (local ids)."""

    kind: QueryKind
    queries: torch.Tensor  # [n, 2]
    candidates: torch.Tensor  # [n, c]
    teacher_logits: torch.Tensor  # [n, c]
    teacher: torch.Tensor  # [n]: index into StepLessons.teachers
    tail: bool = False  # the last column of the logits is a tail bucket (the mass of every unlisted candidate)


@dataclass(frozen=True)
class StepLessons:
    """Everything one training step of a student learns from its teachers."""

    teachers: tuple[str, ...]
    weights: torch.Tensor  # [len(teachers)]: each teacher's weight in the round's plan
    groups: tuple[LabelledRows, ...]


@dataclass(frozen=True)
class StudentContext:
    """What a combination may know of its student: its KB (train answers, entities), the KBs that may teach it (sorted), its device."""

    kb: KnowledgeBase
    teachers: tuple[str, ...]
    device: torch.device


class CombinationSettings(BaseModel):
    """Settings of a teacher combination (none by default)."""

    model_config = ConfigDict(extra="forbid")


class TeacherCombination(abc.ABC):
    """Turns a step's lessons and the student's logits on the same candidates into the KD loss."""

    settings_model: ClassVar[type[CombinationSettings]] = CombinationSettings

    def __init__(self, settings: CombinationSettings, *, temperature: float, relation_weight: float, context: StudentContext | None = None) -> None:
        self.settings = settings
        self.temperature = temperature
        self.relation_weight = relation_weight
        self.context = context

    def modules(self) -> torch.nn.Module | None:
        """Learned parts (e.g. a teacher-selection policy): the student optimises and checkpoints them."""
        return None

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """The learned parts' groups in the student's optimiser; ``learning_rate`` is the student's own."""
        learned = self.modules()
        return [{"params": list(learned.parameters()), "lr": learning_rate}] if learned is not None else []

    @abc.abstractmethod
    def loss(self, lessons: StepLessons, student_logits: list[torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """The distillation loss; ``student_logits[i]`` scores ``lessons.groups[i]``'s candidates; ``batch`` holds the step's own triples."""

    def statistics(self) -> dict:
        """What the combination chose since the last call (e.g. queries per teacher subset), for the round's result."""
        return {}


COMBINATIONS: Registry[type[TeacherCombination]] = Registry("teacher combination")


@COMBINATIONS.register("mean-kl")
class MeanKL(TeacherCombination):
    """KD-MKB eq. 5: the mean over the step's teachers of (entity KL + relation_weight x relation KL).

    Each KL is a mean over that teacher's rows of the step; a plan's edge weight scales its
    teacher's term (1 everywhere is eq. 5). Rows of every teacher go through one KL per group.
    """

    def loss(self, lessons: StepLessons, student_logits: list[torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
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


def make_combination(name: str, settings: dict, *, temperature: float, relation_weight: float, context: StudentContext | None = None) -> TeacherCombination:
    combination = COMBINATIONS.get(name)
    return combination(combination.settings_model.model_validate(settings or {}), temperature=temperature, relation_weight=relation_weight, context=context)


class DSoMSettings(CombinationSettings):
    """DSoM's reinforced teacher combination and neighbour-decoupled KD (Zhao et al. 2025, eq. 4-12), with switches for its ablations."""

    selection: Literal["policy", "all", "confident", "best", "best-subset"] = Field(
        "policy",
        description="Which teachers each query distils from: a subset sampled by the learned policy (eq. 5-10), all of them (the teacher average), "
        "the most confident (ConfTeacher), the one with the lowest cross-entropy on the target (BestTeacher) or the subset with the lowest (BestStrategy).",
    )
    state: Literal["full", "compact"] = Field(
        "full",
        description="The policy's state: every teacher's distribution over every entity (eq. 5, M x |E| wide), "
        "or per teacher its top_m probabilities, entropy, target probability and neighbour mass.",
    )
    hidden: int = Field(1024, gt=0, description="Width of the policy MLP's hidden layer.")
    policy_learning_rate: float = Field(
        1e-3,
        gt=0,
        description="The policy's step size in the student's optimiser (eq. 9's alpha; the paper gives none). "
        "Not the student's: an embedding table's rate (Adagrad 0.1) fixes the policy on one subset within its first steps, before the student has learned anything.",
    )
    top_m: int = Field(8, gt=0, description="compact state: how many of each teacher's largest probabilities it holds.")
    distillation: Literal["ndkd", "dkd", "kd"] = Field(
        "ndkd", description="ndkd: eq. 12 with the query's train answers as neighbours; dkd: the target alone as neighbour (decoupled KD); kd: the plain KL of eq. 2."
    )
    gamma: float = Field(2.0, ge=0, description="Eq. 4's gamma: the weight of the distillation term against the policy's L_RC.")
    nekd_weight: float = Field(1.0, ge=0, description="Eq. 12's alpha: the weight of the binary KL on the neighbours' mass (0: NNKD only).")
    nnkd_weight: float = Field(1.0, ge=0, description="Eq. 12's beta: the weight of the KL over the renormalised non-neighbours (0: NEKD only).")
    neighbour_mass: Literal["mean", "sum"] = Field("mean", description="NEKD's neighbour probability: their mean (the paper) or their sum (DKD's target probability generalised).")


@COMBINATIONS.register("dsom")
class DSoM(TeacherCombination):
    """Per query, a subset of the teachers (sampled by a policy, or a fixed rule) whose mean logits the student distils (eq. 4-12).

    Every teacher must label every entity query of the step's batch over the same candidates (the
    ``dsom`` strategy pulls them so); the plan's edge weights play no part. The policy is the
    student's: its optimiser and checkpoint hold it; its state and reward are detached, so
    ``L_RC`` trains the policy only and the distillation term the student only. ``loss`` is
    ``L_RC + gamma L_KD``; the student adds its own loss as ``(1 - alpha) L_own + alpha loss``,
    so ``alpha = 0.5`` is half of eq. 4.
    """

    settings_model = DSoMSettings

    def __init__(self, settings: DSoMSettings, *, temperature: float, relation_weight: float, context: StudentContext | None = None) -> None:
        super().__init__(settings, temperature=temperature, relation_weight=relation_weight, context=context)
        if context is None:
            raise ConfigError("combination: dsom needs its student's KB")
        if relation_weight:
            raise ConfigError("relation_weight: the dsom combination distils entity queries only; set it to 0")
        self.subsets = dsom.teacher_subsets(len(context.teachers)).to(context.device)
        self._subset_row = {tuple(mask.tolist()): row for row, mask in enumerate(self.subsets.cpu())}
        kb = context.kb
        self.answers = KnownAnswers(kb.train, len(kb.entities), len(kb.relations))
        self.policy: dsom.PolicyNetwork | None = None
        if settings.selection == "policy" and context.teachers:  # a KB that only teaches has no policy to learn
            teachers = len(context.teachers)
            width = teachers * len(kb.entities) if settings.state == "full" else dsom.compact_state_width(teachers, settings.top_m)
            self.policy = dsom.PolicyNetwork(width, settings.hidden, len(self.subsets)).to(context.device)
        self.chosen = torch.zeros(len(self.subsets), dtype=torch.long)

    def modules(self) -> torch.nn.Module | None:
        return self.policy

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        return [{**group, "lr": self.settings.policy_learning_rate} for group in super().parameter_groups(learning_rate)]

    def statistics(self) -> dict:
        counts, self.chosen = self.chosen.tolist(), torch.zeros_like(self.chosen)
        names = self.context.teachers
        labels = ["+".join(name for name, used in zip(names, mask.tolist()) if used) for mask in self.subsets.cpu()]
        return {"teacher_subsets": {label: count for label, count in zip(labels, counts) if count}}

    def loss(self, lessons: StepLessons, student_logits: list[torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), device=self.context.device)
        rows = 0
        for group, student in zip(lessons.groups, student_logits, strict=True):
            teacher_logits, student, candidates, targets = self._aligned(lessons, group, student, batch)
            target_columns, neighbours = self._columns(group, candidates, targets, batch)
            total = total + self._query_loss(teacher_logits, student, target_columns, neighbours) * len(targets)
            rows += len(targets)
        return total / max(rows, 1)

    def _aligned(self, lessons: StepLessons, group: LabelledRows, student: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[M, n, c]`` teacher logits in the policy's teacher order, the student's logits, the listed candidates and the targets of the batch's rows."""
        if group.kind == QueryKind.RELATION:
            raise DataError("the dsom combination distils entity queries only, but received relation queries")
        queries = batch[:, list(QUERY_COLUMNS[group.kind])]
        targets = batch[:, 2 if group.kind == QueryKind.TAIL else 0]
        per_teacher, first = [], None
        for name in self.context.teachers:
            if name not in lessons.teachers:
                raise DataError(f"dsom: teacher {name!r} sent no soft labels for a step; every teacher must label every query")
            rows = (group.teacher == lessons.teachers.index(name)).nonzero().flatten()
            if first is None:
                first = rows
            if len(rows) != len(queries) or not torch.equal(group.queries[rows], queries) or not torch.equal(take_rows(group.candidates, rows), take_rows(group.candidates, first)):
                raise DataError(f"dsom: teacher {name!r} did not label the step's queries over the same candidates as the others; align every teacher on all of the student's entities")
            per_teacher.append(group.teacher_logits[rows])
        return torch.stack(per_teacher), student[first], take_rows(group.candidates, first), targets

    def _columns(self, group: LabelledRows, candidates: torch.Tensor, targets: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's target column and neighbour mask over the teachers' columns: its query's train answers, the target among them (a tail bucket is no neighbour)."""
        match = candidates == targets[:, None]
        if not bool(match.any(dim=1).all()):
            raise DataError("dsom: a query's target is not among the teachers' candidates")
        answer_rows, answers = self.answers.pairs(group.kind, batch[:, list(QUERY_COLUMNS[group.kind])].cpu())
        known = torch.zeros(len(targets), len(self.context.kb.entities), dtype=torch.bool)
        known[answer_rows, answers] = True
        neighbours = known.to(candidates.device).gather(1, candidates)
        if group.tail:
            neighbours = F.pad(neighbours, (0, 1), value=False)
        return match.float().argmax(dim=1), neighbours

    def _query_loss(self, teacher_logits: torch.Tensor, student: torch.Tensor, target_columns: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        settings = self.settings
        reinforce = torch.zeros((), device=student.device)
        with torch.no_grad():
            if settings.selection == "all":
                chosen = torch.ones(teacher_logits.shape[1], teacher_logits.shape[0], dtype=torch.bool, device=student.device)
            elif settings.selection == "confident":
                chosen = dsom.confident_teacher(teacher_logits)
            elif settings.selection == "best":
                chosen = dsom.best_subset(teacher_logits, target_columns, self.subsets[self.subsets.sum(dim=1) == 1])
            elif settings.selection == "best-subset":
                chosen = dsom.best_subset(teacher_logits, target_columns, self.subsets)
            else:
                state = dsom.full_state(teacher_logits) if settings.state == "full" else dsom.compact_state(teacher_logits, target_columns, neighbours, settings.top_m)
                if state.shape[1] != self.policy.layers[0].in_features:
                    raise DataError(f"dsom: a state of width {state.shape[1]} for a policy of width {self.policy.layers[0].in_features}; the full state needs every teacher's answer over every entity")
        if settings.selection == "policy":
            log_policy = self.policy(state)
            actions = torch.multinomial(log_policy.detach().exp(), 1).flatten()
            chosen = self.subsets[actions]
            detached = student.detach()
            reward = dsom.rewards(dsom.combined_logits(teacher_logits, chosen), detached, target_columns)
            baseline = dsom.rewards(teacher_logits.mean(dim=0), detached, target_columns)
            reinforce = dsom.reinforce_loss(log_policy, actions, reward.to(log_policy.device), baseline.to(log_policy.device))
        self.chosen += torch.bincount(torch.tensor([self._subset_row[tuple(mask)] for mask in chosen.cpu().tolist()], dtype=torch.long), minlength=len(self.subsets))
        combined = dsom.combined_logits(teacher_logits, chosen)
        if settings.distillation == "kd":
            distilled = distillation_kl(combined, student, self.temperature)
        else:
            if settings.distillation == "dkd":
                neighbours = F.one_hot(target_columns, neighbours.shape[1]).bool()
            distilled = dsom.ndkd_loss(
                combined, student, neighbours, temperature=self.temperature, alpha=settings.nekd_weight, beta=settings.nnkd_weight, neighbour_mass=settings.neighbour_mass
            )
        return reinforce + settings.gamma * distilled
