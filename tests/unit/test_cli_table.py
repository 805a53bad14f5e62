"""The metrics table that `kdmkb run`, `kdmkb demo` and `kdmkb wait` print."""

from __future__ import annotations

from kdmkb.services.cli import _print_table

METRICS = {"mrr": 0.4685, "mr": 10.22, "hits@1": 0.3548, "hits@3": 0.5015, "hits@10": 0.6906}


def columns(line: str) -> list[str]:
    return line.split()


def test_a_kb_name_longer_than_the_default_column_stays_apart_from_its_strategy(capsys):
    _print_table([{"strategy": "none", "kbs": {"mtl-kgc-lp-rp-rr": METRICS, "a": METRICS}}])
    header, rule, *rows = capsys.readouterr().out.splitlines()
    assert columns(header) == ["KB", "strategy", "MRR", "MR", "H@1", "H@3", "H@10"]
    assert [columns(row)[:3] for row in rows] == [["a", "none", "0.4685"], ["mtl-kgc-lp-rp-rr", "none", "0.4685"]]
    assert all(row.index("none") == header.index("strategy") for row in rows) and len(rule) == len(header)


def test_short_names_keep_the_documented_layout(capsys):
    _print_table([{"strategy": "cooperative", "kbs": {"umls-0": METRICS}}])
    header, _, row = capsys.readouterr().out.splitlines()
    assert header == "KB          strategy           MRR       MR     H@1     H@3    H@10"  # as docs/demo.md shows it
    assert row.startswith("umls-0      cooperative     0.4685    10.22")
