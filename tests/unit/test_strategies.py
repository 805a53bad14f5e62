"""Who teaches and who learns, round by round, for every strategy."""

from __future__ import annotations

import pytest

from kdmkb.coordinator.strategies import STRATEGIES, RoundPlan, make_strategy
from kdmkb.services.config import JobSettings
from kdmkb.services.errors import ConfigError

KBS = ["a", "b", "c"]


def plans(name: str, **settings) -> list[RoundPlan]:
    typed = JobSettings(**settings)
    strategy = make_strategy(name, KBS, typed)
    return [strategy.plan(r) for r in range(typed.rounds)]


def test_none_never_teaches():
    assert all(p == RoundPlan((), tuple(KBS)) for p in plans("none", rounds=5))


def test_cooperative_everyone_teaches_and_learns_after_warm_up():
    rounds = plans("cooperative", rounds=5, steps_per_round=10, warmup_steps=15)
    assert [p.teachers for p in rounds] == [(), ()] + [tuple(KBS)] * 3  # rounds 0 and 1 start before step 15
    assert all(p.students == tuple(KBS) for p in rounds)


def test_one_way_pretrains_then_freezes_the_teacher():
    rounds = plans("one-way", rounds=6, pretrain_rounds=2, teacher="b")
    assert rounds[:2] == [RoundPlan((), tuple(KBS))] * 2
    assert rounds[2:] == [RoundPlan(("b",), ("a", "c"))] * 4


def test_one_way_defaults_to_the_first_kb_and_half_the_rounds():
    rounds = plans("one-way", rounds=4)
    assert rounds[1].teachers == () and rounds[2] == RoundPlan(("a",), ("b", "c"))


def test_sequential_kbs_take_turns_as_frozen_teacher():
    rounds = plans("sequential", rounds=6, pretrain_rounds=2)
    assert [p.teachers for p in rounds[2:]] == [("a",), ("b",), ("c",), ("a",)]
    assert all(p.teachers[0] not in p.students and len(p.students) == 2 for p in rounds[2:])


def test_every_kb_trains_the_same_steps_except_frozen_teachers():
    """The strategies share a budget: a KB trains in every round it is not a frozen teacher."""
    for name in STRATEGIES:
        rounds = plans(name, rounds=8, pretrain_rounds=4)
        trained = {kb: sum(kb in p.students for p in rounds) for kb in KBS}
        frozen = {kb: sum(kb in p.teachers and kb not in p.students for p in rounds) for kb in KBS}
        assert all(trained[kb] + frozen[kb] == 8 for kb in KBS), (name, trained, frozen)


@pytest.mark.parametrize(
    "name, kbs, settings, field",
    [
        ("telepathy", KBS, {}, "strategy"),
        ("cooperative", ["a"], {}, "kbs"),
        ("one-way", KBS, {"teacher": "z"}, "settings.teacher"),
    ],
)
def test_bad_strategy_requests_name_the_field(name, kbs, settings, field):
    with pytest.raises(ConfigError, match=field):
        make_strategy(name, kbs, JobSettings(**settings))


def test_pretrain_rounds_must_leave_rounds_to_distil():
    with pytest.raises(ValueError, match="pretrain_rounds"):
        JobSettings(rounds=4, pretrain_rounds=4)
