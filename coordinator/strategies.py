"""Distillation strategies by name: each plans its rounds as edges (teacher -> student, push or pull, weight).

The coordinator's round loop is the same for every strategy (:mod:`kdmkb.coordinator.jobs`): it
asks the strategy for a round's :class:`RoundPlan`, runs it, and hands the :class:`RoundResults`
back to :meth:`Strategy.observe`, so that an adaptive strategy can change the next plan. Like a
worker type, a strategy has its own settings model (``[strategy]`` in a job file) and a minimum
number of KBs; nothing outside this module tests a strategy's name.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdmkb.services.config import JobSettings, describe_validation_error
from kdmkb.services.errors import ConfigError
from kdmkb.services.registry import Registry

Mode = Literal["push", "pull"]
CandidateRule = Literal["top-k", "listed", "all", "shared"]


@dataclass(frozen=True)
class Edge:
    """One teacher's soft labels for one student in a round.

    ``push``: the teacher labels the queries of its own batches (KD-MKB). ``pull``: the student
    sends its own batches' queries and the teacher labels those, over ``candidates``: the teacher's
    top-k plus k random (``top-k``), the student's own (``listed``), every shared entity (``all``),
    or one list the student shares across a block's queries plus a tail bucket for the rest (``shared``).
    ``weight`` scales the teacher's term in the student's teacher combination.
    """

    teacher: str
    student: str
    mode: Mode = "push"
    weight: float = 1.0
    candidates: CandidateRule = "top-k"


@dataclass(frozen=True)
class RoundPlan:
    """A round's edges, and the KBs that take training steps (a frozen teacher does not)."""

    edges: tuple[Edge, ...]
    training: tuple[str, ...]

    def students_of(self, teacher: str) -> list[str]:
        return [edge.student for edge in self.edges if edge.teacher == teacher]


@dataclass(frozen=True)
class RoundResults:
    """What a round returned: per training KB its losses, per edge the bytes its soft labels took."""

    round: int
    training: dict[str, dict] = field(default_factory=dict)
    soft_label_bytes: dict[tuple[str, str], int] = field(default_factory=dict)


class StrategySettings(BaseModel):
    """Settings every strategy accepts (none)."""

    model_config = ConfigDict(extra="forbid")

    def check_kbs(self, kbs: list[str]) -> None:
        """Refuses settings that name a KB outside ``kbs`` (a job's, or a job file's), naming the field."""

    @staticmethod
    def _require_kb(field: str, name: str, kbs: list[str]) -> None:
        if name not in kbs:
            raise ConfigError(f"strategy_settings.{field}: {name!r} is not one of the job's KBs ({', '.join(kbs)})")


class ExchangeSettings(StrategySettings):
    """Settings of strategies whose KBs exchange soft labels."""

    exchange: Mode = Field("push", description="push: teachers label their own batches (KD-MKB); pull: students ask their teachers about their own batches.")
    candidates: CandidateRule = Field(
        "top-k",
        description="pull only: the teacher's top-k plus k random (top-k), the student's own (listed), every shared entity (all), "
        "or one list per block (the student's top-k and train answers) plus a tail bucket for the rest (shared).",
    )

    def edge(self, teacher: str, student: str, weight: float = 1.0) -> Edge:
        return Edge(teacher, student, self.exchange, weight, self.candidates)


class Strategy(abc.ABC):
    """Plans each round of a job; see the module docstring."""

    settings_model: ClassVar[type[StrategySettings]] = StrategySettings
    min_kbs: ClassVar[int] = 2

    def __init__(self, kbs: list[str], settings: StrategySettings, job: JobSettings) -> None:
        settings.check_kbs(list(kbs))
        self.kbs = tuple(kbs)
        self.settings = settings
        self.job = job

    @abc.abstractmethod
    def plan(self, round_: int) -> RoundPlan:
        """The edges of round ``round_`` (0-based)."""

    def observe(self, results: RoundResults) -> None:
        """Receives what the round just planned returned; adaptive strategies change their next plan here."""

    def state(self) -> dict:
        """What :meth:`observe` has learned, as JSON, checkpointed with the job so a resumed job plans as an uninterrupted one."""
        return {}

    def restore(self, state: dict) -> None:
        """Takes back what :meth:`state` returned."""

    def alone(self) -> RoundPlan:
        return RoundPlan((), self.kbs)

    def teachers_of(self, kb: str) -> tuple[str, ...] | None:
        """The KBs whose soft labels ``kb`` may learn from in this job, the ones its teacher combination is built for (None: every KB aligned with it)."""
        return None


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


@STRATEGIES.register("none")
class Independent(Strategy):
    """Every KB trains on its own triples only: the baseline."""

    min_kbs = 1

    def plan(self, round_: int) -> RoundPlan:
        return self.alone()


class CooperativeSettings(ExchangeSettings):
    warmup_steps: int = Field(0, ge=0, description="Steps of training alone before any distillation.")


@STRATEGIES.register("cooperative")
class Cooperative(Strategy):
    """KD-MKB (Algorithm 1): every KB is teacher and student at every step, jointly updated."""

    settings_model = CooperativeSettings

    def plan(self, round_: int) -> RoundPlan:
        if round_ * self.job.steps_per_round < self.settings.warmup_steps:
            return self.alone()
        return RoundPlan(tuple(self.settings.edge(t, s) for t in self.kbs for s in self.kbs if s != t), self.kbs)


class PretrainSettings(ExchangeSettings):
    pretrain_rounds: int | None = Field(None, ge=0, description="Rounds of training alone before teachers distil (default: half of the job's rounds).")

    def pretrain(self, job: JobSettings) -> int:
        rounds = job.rounds // 2 if self.pretrain_rounds is None else self.pretrain_rounds
        if rounds >= job.rounds:
            raise ConfigError(f"strategy_settings.pretrain_rounds: {rounds} must be smaller than the job's rounds ({job.rounds})")
        return rounds


class OneWaySettings(PretrainSettings):
    teacher: str | None = Field(None, description="The frozen teacher KB (default: the job's first KB).")

    def check_kbs(self, kbs: list[str]) -> None:
        if self.teacher is not None:
            self._require_kb("teacher", self.teacher, kbs)


@STRATEGIES.register("one-way")
class OneWay(Strategy):
    """The paper's "Independent": a teacher pre-trained alone, then frozen, distils into the others."""

    settings_model = OneWaySettings

    def __init__(self, kbs: list[str], settings: OneWaySettings, job: JobSettings) -> None:
        super().__init__(kbs, settings, job)
        self.teacher = settings.teacher or self.kbs[0]
        self.pretrain = settings.pretrain(job)

    def plan(self, round_: int) -> RoundPlan:
        if round_ < self.pretrain:
            return self.alone()
        students = tuple(kb for kb in self.kbs if kb != self.teacher)
        return RoundPlan(tuple(self.settings.edge(self.teacher, s) for s in students), students)


@STRATEGIES.register("sequential")
class Sequential(Strategy):
    """The paper's "X distills ~X": after training alone, the KBs take turns as the frozen teacher."""

    settings_model = PretrainSettings

    def __init__(self, kbs: list[str], settings: PretrainSettings, job: JobSettings) -> None:
        super().__init__(kbs, settings, job)
        self.pretrain = settings.pretrain(job)

    def plan(self, round_: int) -> RoundPlan:
        if round_ < self.pretrain:
            return self.alone()
        teacher = self.kbs[(round_ - self.pretrain) % len(self.kbs)]
        students = tuple(kb for kb in self.kbs if kb != teacher)
        return RoundPlan(tuple(self.settings.edge(teacher, s) for s in students), students)


class DSoMStrategySettings(StrategySettings):
    student: str = Field(description="The student KB; every other KB of the job is one of its teachers.")
    pretrain_rounds: int = Field(0, ge=0, description="Rounds in which the teachers train alone first (0: they were trained beforehand, e.g. by a job of strategy none).")
    answers: Literal["full", "compact"] = Field(
        "full", description="What each teacher answers: its logits over every shared entity, or over one list per block (the student's top-k and train answers) plus a tail bucket."
    )

    def check_kbs(self, kbs: list[str]) -> None:
        self._require_kb("student", self.student, kbs)


@STRATEGIES.register("dsom")
class DSoMStrategy(Strategy):
    """DSoM (Zhao et al. 2025): teachers pre-trained alone, then frozen; the student pulls every teacher's labels for its own queries.

    Only the student trains once the teachers are done. How it combines them is the job's
    ``combination`` (``dsom``: the reinforced selection with NDKD; ``mean-kl``: the plain average of KLs).
    """

    settings_model = DSoMStrategySettings

    def __init__(self, kbs: list[str], settings: DSoMStrategySettings, job: JobSettings) -> None:
        super().__init__(kbs, settings, job)
        if settings.pretrain_rounds >= job.rounds:
            raise ConfigError(f"strategy_settings.pretrain_rounds: {settings.pretrain_rounds} must be smaller than the job's rounds ({job.rounds})")
        if job.combination == "dsom" and job.relation_weight:
            raise ConfigError("settings.relation_weight: the dsom combination distils entity queries only; set it to 0")
        self.teachers = tuple(kb for kb in self.kbs if kb != settings.student)
        rule = "all" if settings.answers == "full" else "shared"
        self.edges = tuple(Edge(teacher, settings.student, "pull", 1.0, rule) for teacher in self.teachers)

    def plan(self, round_: int) -> RoundPlan:
        if round_ < self.settings.pretrain_rounds:
            return RoundPlan((), self.teachers)
        return RoundPlan(self.edges, (self.settings.student,))

    def teachers_of(self, kb: str) -> tuple[str, ...]:
        """Only the student learns: a teacher builds no combination's policy (the full state is |M| x |E| wide)."""
        return self.teachers if kb == self.settings.student else ()


def validate_strategy_settings(name: str, raw: dict | StrategySettings | None) -> StrategySettings:
    """The strategy's typed settings; errors name ``strategy`` or ``strategy_settings.<field>``."""
    try:
        strategy = STRATEGIES.get(name)
    except ConfigError as error:
        raise ConfigError(f"strategy: {error}") from None
    if isinstance(raw, strategy.settings_model):
        return raw
    if isinstance(raw, StrategySettings):
        raw = raw.model_dump(exclude_unset=True)
    try:
        return strategy.settings_model.model_validate(raw or {})
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, "strategy_settings")) from None


def make_strategy(name: str, kbs: list[str], job: JobSettings, settings: dict | StrategySettings | None = None) -> Strategy:
    """The named strategy over ``kbs``; a request it cannot serve is a :class:`ConfigError` naming the field."""
    typed = validate_strategy_settings(name, settings)
    strategy = STRATEGIES.get(name)
    if len(kbs) < strategy.min_kbs:
        raise ConfigError(f"kbs: strategy {name!r} needs at least {strategy.min_kbs} KBs, got {len(kbs)}")
    return strategy(list(kbs), typed, job)
