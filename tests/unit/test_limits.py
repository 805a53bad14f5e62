"""Server limits: parsed from NAME=VALUE, and each refusal naming its limit."""

from __future__ import annotations

import pytest

from kdmkb.kb_worker.data import load_kb
from kdmkb.services.errors import ConfigError, DataError, LimitError
from kdmkb.services.limits import Limits, StreamSlots


def test_limits_from_name_value_pairs():
    limits = Limits.parse(["max_kbs=3", " max_streams = 10 "])
    assert (limits.max_kbs, limits.max_streams, limits.max_dim) == (3, 10, Limits().max_dim)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [(["max_kbs"], "--limit: 'max_kbs' is not NAME=VALUE; the limits are max_kbs, "), (["max_kb=3"], "limit.max_kb: Extra inputs"), (["max_dim=0"], "limit.max_dim: Input should be greater than 0")],
)
def test_a_bad_limit_names_itself(pairs, message):
    with pytest.raises(ConfigError, match=message):
        Limits.parse(pairs)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dim": 1_000_000_000}, "settings.dim: 1000000000 is over the server's limit max_dim = 65536"),
        ({"dim": 16, "threads": 1000}, "settings.threads: 1000 is over the server's limit max_threads = 64"),
        ({"eval_batch_size": 70000}, "settings.eval_batch_size: 70000 is over the server's limit max_batch_size = 65536"),
    ],
)
def test_settings_out_of_the_servers_range(settings, message):
    with pytest.raises(ConfigError, match=message):
        Limits().check_settings(settings)
    Limits().check_settings({"dim": 65536, "threads": 64, "batch_size": 65536})


def test_triple_files_over_the_limits_are_refused_by_name(tmp_path):
    for split, rows in (("train", 5), ("valid", 1), ("test", 1)):
        (tmp_path / f"{split}.tsv").write_text("".join(f"e{i}\tr\te{i + 1}\n" for i in range(rows)), encoding="utf-8")
    assert len(load_kb(tmp_path, Limits(max_triples=5)).train) == 5
    with pytest.raises(DataError, match=r"train.tsv: more than the server's limit max_triples = 4 triples"):
        load_kb(tmp_path, Limits(max_triples=4))
    size = (tmp_path / "train.tsv").stat().st_size
    with pytest.raises(DataError, match=rf"train.tsv: {size} bytes, over the server's limit max_file_bytes = {size - 1}"):
        load_kb(tmp_path, Limits(max_file_bytes=size - 1))


def test_stream_slots_refuse_beyond_the_limit_and_free_on_exit():
    slots = StreamSlots(2)
    with slots.open("WatchJob"), slots.open("WatchJob"):
        with pytest.raises(LimitError, match="WatchJob: 2 streams are open, the server's limit max_streams"):
            with slots.open("WatchJob"):
                pass
    with slots.open("WatchJob"), slots.open("WatchJob"):
        pass
