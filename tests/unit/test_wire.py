"""Settings through a Struct: plain values back, and a number JSON cannot hold refused with its path."""

from __future__ import annotations

import math

import pytest

from kdmkb.services.errors import ConfigError
from kdmkb.services.wire import from_struct, to_struct


def test_settings_come_back_as_plain_values():
    assert from_struct(to_struct({"dim": 16, "name": "x", "on": True, "none": None, "nested": [1.5, {"b": 2}]})) == {
        "dim": 16.0,
        "name": "x",
        "on": True,
        "none": None,
        "nested": [1.5, {"b": 2.0}],
    }


@pytest.mark.parametrize(
    ("settings", "field", "path"),
    [
        ({"dim": math.nan}, "settings", "settings.dim"),
        ({"alpha": -math.inf}, "settings", "settings.alpha"),
        ({"teacher": [1, {"weight": math.inf}]}, "strategy_settings", "strategy_settings.teacher[1].weight"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_with_its_path(settings, field, path):
    with pytest.raises(ConfigError) as raised:
        from_struct(to_struct(settings), field)
    assert str(raised.value).startswith(f"{path}: must be a finite number")
