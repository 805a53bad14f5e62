"""Distillation strategies by name: who teaches and who learns in each round.

The coordinator's round loop is the same for every strategy; a strategy only plans rounds.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from kdmkb.services.config import JobSettings
from kdmkb.services.errors import ConfigError
from kdmkb.services.registry import Registry


@dataclass(frozen=True)
class RoundPlan:
    """Teachers send soft labels to every student but themselves; students train (frozen KBs do not)."""

    teachers: tuple[str, ...]
    students: tuple[str, ...]


class Strategy(abc.ABC):
    def __init__(self, kbs: list[str], settings: JobSettings) -> None:
        self.kbs = tuple(kbs)
        self.settings = settings

    @abc.abstractmethod
    def plan(self, round_: int) -> RoundPlan:
        """The roles of round ``round_`` (0-based)."""

    def alone(self) -> RoundPlan:
        return RoundPlan((), self.kbs)


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


@STRATEGIES.register("none")
class Independent(Strategy):
    """Every KB trains on its own triples only: the baseline."""

    def plan(self, round_: int) -> RoundPlan:
        return self.alone()


@STRATEGIES.register("cooperative")
class Cooperative(Strategy):
    """KD-MKB (Algorithm 1): every KB is teacher and student at every step, jointly updated."""

    def plan(self, round_: int) -> RoundPlan:
        if round_ * self.settings.steps_per_round < self.settings.warmup_steps:
            return self.alone()
        return RoundPlan(self.kbs, self.kbs)


@STRATEGIES.register("one-way")
class OneWay(Strategy):
    """The paper's "Independent": a teacher pre-trained alone, then frozen, distils into the others."""

    def __init__(self, kbs: list[str], settings: JobSettings) -> None:
        super().__init__(kbs, settings)
        self.teacher = settings.teacher or self.kbs[0]
        if self.teacher not in self.kbs:
            raise ConfigError(f"settings.teacher: {self.teacher!r} is not one of the job's KBs ({', '.join(self.kbs)})")

    def plan(self, round_: int) -> RoundPlan:
        if round_ < self.settings.pretrain:
            return self.alone()
        return RoundPlan((self.teacher,), tuple(kb for kb in self.kbs if kb != self.teacher))


@STRATEGIES.register("sequential")
class Sequential(Strategy):
    """The paper's "X distills ~X": after training alone, the KBs take turns as the frozen teacher."""

    def plan(self, round_: int) -> RoundPlan:
        if round_ < self.settings.pretrain:
            return self.alone()
        teacher = self.kbs[(round_ - self.settings.pretrain) % len(self.kbs)]
        return RoundPlan((teacher,), tuple(kb for kb in self.kbs if kb != teacher))


def make_strategy(name: str, kbs: list[str], settings: JobSettings) -> Strategy:
    if len(kbs) < 1:
        raise ConfigError("kbs: a job needs at least one KB")
    if name != "none" and len(kbs) < 2:
        raise ConfigError(f"kbs: strategy {name!r} needs at least two KBs")
    return STRATEGIES.get(name)(kbs, settings)
