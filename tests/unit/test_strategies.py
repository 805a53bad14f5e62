"""Who teaches whom and who trains, round by round, for every strategy; their settings; the observe hook."""

from __future__ import annotations

import pytest

from kdmkb.coordinator.strategies import STRATEGIES, Edge, RoundPlan, RoundResults, Strategy, StrategySettings, make_strategy
from kdmkb.services.config import JobSettings
from kdmkb.services.errors import ConfigError

KBS = ["a", "b", "c"]


def plans(name: str, strategy_settings: dict | None = None, **job) -> list[RoundPlan]:
    typed = JobSettings(**job)
    strategy = make_strategy(name, KBS, typed, strategy_settings)
    return [strategy.plan(r) for r in range(typed.rounds)]


def teachers(plan: RoundPlan) -> tuple[str, ...]:
    return tuple(dict.fromkeys(edge.teacher for edge in plan.edges))


def test_none_never_teaches():
    assert all(p == RoundPlan((), tuple(KBS)) for p in plans("none", rounds=5))


def test_cooperative_everyone_teaches_every_other_kb_after_warm_up():
    rounds = plans("cooperative", {"warmup_steps": 15}, rounds=5, steps_per_round=10)
    assert [teachers(p) for p in rounds] == [(), ()] + [tuple(KBS)] * 3  # rounds 0 and 1 start before step 15
    assert all(p.training == tuple(KBS) for p in rounds)
    assert set(rounds[-1].edges) == {Edge(t, s) for t in KBS for s in KBS if s != t}


def test_exchange_settings_shape_every_edge():
    rounds = plans("cooperative", {"exchange": "pull", "candidates": "listed"}, rounds=2)
    assert {(e.mode, e.candidates, e.weight) for e in rounds[0].edges} == {("pull", "listed", 1.0)}


def test_one_way_pretrains_then_freezes_the_teacher():
    rounds = plans("one-way", {"pretrain_rounds": 2, "teacher": "b"}, rounds=6)
    assert rounds[:2] == [RoundPlan((), tuple(KBS))] * 2
    assert rounds[2:] == [RoundPlan((Edge("b", "a"), Edge("b", "c")), ("a", "c"))] * 4


def test_one_way_defaults_to_the_first_kb_and_half_the_rounds():
    rounds = plans("one-way", rounds=4)
    assert teachers(rounds[1]) == () and rounds[2] == RoundPlan((Edge("a", "b"), Edge("a", "c")), ("b", "c"))


def test_sequential_kbs_take_turns_as_frozen_teacher():
    rounds = plans("sequential", {"pretrain_rounds": 2}, rounds=6)
    assert [teachers(p) for p in rounds[2:]] == [("a",), ("b",), ("c",), ("a",)]
    assert all(teachers(p)[0] not in p.training and len(p.training) == 2 for p in rounds[2:])


def test_every_kb_trains_the_same_steps_except_frozen_teachers():
    """The strategies share a budget: a KB trains in every round it is not a frozen teacher."""
    for name in STRATEGIES:
        settings = {"pretrain_rounds": 4} if "pretrain_rounds" in STRATEGIES.get(name).settings_model.model_fields else {}
        if name == "dsom":  # teachers trained beforehand (its own test covers pre-training, when the student waits)
            settings = {"student": "a"}
        rounds = plans(name, settings, rounds=8)
        trained = {kb: sum(kb in p.training for p in rounds) for kb in KBS}
        frozen = {kb: sum(kb in teachers(p) and kb not in p.training for p in rounds) for kb in KBS}
        assert all(trained[kb] + frozen[kb] == 8 for kb in KBS), (name, trained, frozen)


def test_dsom_teachers_pretrain_then_the_student_pulls_every_teachers_answers():
    rounds = plans("dsom", {"student": "b", "pretrain_rounds": 2}, rounds=4)
    assert rounds[:2] == [RoundPlan((), ("a", "c"))] * 2
    assert rounds[2:] == [RoundPlan((Edge("a", "b", "pull", 1.0, "all"), Edge("c", "b", "pull", 1.0, "all")), ("b",))] * 2
    compact = plans("dsom", {"student": "a", "answers": "compact"}, rounds=1)[0]
    assert {(e.teacher, e.candidates) for e in compact.edges} == {("b", "shared"), ("c", "shared")} and compact.training == ("a",)


@pytest.mark.parametrize(
    "name, kbs, settings, field",
    [
        ("telepathy", KBS, {}, "strategy"),
        ("cooperative", ["a"], {}, "kbs"),
        ("one-way", KBS, {"teacher": "z"}, "strategy_settings.teacher"),
        ("one-way", KBS, {"pretrain_rounds": 30}, "strategy_settings.pretrain_rounds"),
        ("cooperative", KBS, {"teacher": "a"}, "strategy_settings.teacher"),  # not a cooperative setting
        ("none", KBS, {"exchange": "pull"}, "strategy_settings.exchange"),
        ("sequential", KBS, {"exchange": "sideways"}, "strategy_settings.exchange"),
        ("dsom", KBS, {}, "strategy_settings.student"),
        ("dsom", KBS, {"student": "z"}, "strategy_settings.student"),
        ("dsom", KBS, {"student": "a", "pretrain_rounds": 30}, "strategy_settings.pretrain_rounds"),
        ("dsom", KBS, {"student": "a", "answers": "some"}, "strategy_settings.answers"),
        ("dsom", ["a"], {"student": "a"}, "kbs"),
    ],
)
def test_bad_strategy_requests_name_the_field(name, kbs, settings, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_strategy(name, kbs, JobSettings(rounds=30), settings)


def test_dsom_with_its_combination_sends_no_relation_queries():
    with pytest.raises(ConfigError, match="settings.relation_weight"):
        make_strategy("dsom", KBS, JobSettings(combination="dsom"), {"student": "a"})  # relation_weight defaults to 0.25
    assert make_strategy("dsom", KBS, JobSettings(combination="dsom", relation_weight=0), {"student": "a"}).teachers == ("b", "c")


def test_minimum_kbs_come_from_the_strategy():
    assert STRATEGIES.get("none").min_kbs == 1 and make_strategy("none", ["a"], JobSettings())
    assert all(STRATEGIES.get(name).min_kbs == 2 for name in ("cooperative", "one-way", "sequential", "dsom"))


class _Alternating(Strategy):
    """An adaptive strategy: the KB with the lower loss last round teaches the other (a test of the hook, not a method)."""

    settings_model = StrategySettings

    def __init__(self, kbs, settings, job) -> None:
        super().__init__(kbs, settings, job)
        self.best = self.kbs[0]

    def plan(self, round_: int) -> RoundPlan:
        student = next(kb for kb in self.kbs if kb != self.best)
        return RoundPlan((Edge(self.best, student, "pull", 0.5),), self.kbs)

    def observe(self, results: RoundResults) -> None:
        self.best = min(results.training, key=lambda kb: results.training[kb]["loss"])


def test_observe_lets_a_strategy_adapt_its_next_plan():
    strategy = _Alternating(["a", "b"], StrategySettings(), JobSettings())
    assert strategy.plan(0).edges == (Edge("a", "b", "pull", 0.5),)
    strategy.observe(RoundResults(0, {"a": {"loss": 2.0}, "b": {"loss": 1.0}}))
    assert strategy.plan(1).edges == (Edge("b", "a", "pull", 0.5),)
