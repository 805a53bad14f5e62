"""Job files: the ``[strategy]`` table, and settings checked by their owners when the file is read."""

from __future__ import annotations

import pytest

from kdmkb.services.config import load_job_file
from kdmkb.services.errors import ConfigError

KB = '\n[[kb]]\nname = "a"\ndata = "a"\n'


def job(tmp_path, text: str):
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return load_job_file(path)


def test_a_strategy_table_gives_the_name_and_its_settings(tmp_path):
    loaded = job(tmp_path, '[strategy]\nname = "one-way"\nteacher = "a"\nexchange = "pull"\n' + KB)
    assert loaded.strategy == "one-way" and loaded.strategy_settings == {"teacher": "a", "exchange": "pull"}


def test_a_strategy_name_alone_and_a_settings_table(tmp_path):
    loaded = job(tmp_path, 'strategy = "cooperative"\n[strategy_settings]\nwarmup_steps = 20\n' + KB)
    assert loaded.strategy == "cooperative" and loaded.strategy_settings == {"warmup_steps": 20}
    assert job(tmp_path, KB).strategy == "cooperative"  # the default


def test_a_dsom_job_names_its_student_and_the_combination(tmp_path):
    text = '[strategy]\nname = "dsom"\nstudent = "a"\nanswers = "compact"\n'
    text += '[job]\ncombination = "dsom"\nrelation_weight = 0\ntemperature = 4.0\n[job.combination_settings]\nstate = "compact"\n'
    loaded = job(tmp_path, text + KB + '\n[[kb]]\nname = "text"\ndata = "a"\nworker_type = "feature-complex"\n[kb.settings]\nfeatures = "text"\n')
    assert loaded.strategy == "dsom" and loaded.strategy_settings == {"student": "a", "answers": "compact"}
    assert loaded.job.combination == "dsom" and loaded.job.combination_settings == {"state": "compact"}


@pytest.mark.parametrize(
    "text, message",
    [
        ('[strategy]\nname = "one-way"\nteachr = "a"\n' + KB, "strategy_settings.teachr: Extra inputs"),
        ('[strategy]\nname = "none"\nexchange = "pull"\n' + KB, "strategy_settings.exchange"),
        ('strategy = "telepathy"\n' + KB, "strategy: unknown strategy 'telepathy'; known: cooperative, dsom, none, one-way, sequential"),
        ('[strategy]\nname = "dsom"\nstudent = "z"\n' + KB, r"strategy_settings.student: 'z' is not one of the job's KBs \(a\)"),
        ('[strategy]\nname = "dsom"\n' + KB, "strategy_settings.student: Field required"),
        ('[strategy]\nname = "one-way"\nteacher = "b"\n' + KB, "strategy_settings.teacher: 'b' is not one of"),
        ('[strategy]\nname = "one-way"\n[strategy_settings]\nteacher = "a"\n' + KB, "not both"),
        (KB + "[kb.settings]\ndimm = 3\n", r"kb\[0\].settings.dimm: Extra inputs"),
        (KB + 'worker_type = "transh"\n', r"kb\[0\].worker_type: unknown worker type 'transh'"),
        ('[job]\ncombination = "vote"\n' + KB, "unknown teacher combination 'vote'"),
    ],
)
def test_bad_settings_are_named_when_the_file_is_read(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        job(tmp_path, text)
