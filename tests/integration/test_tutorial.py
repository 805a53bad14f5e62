"""docs/tutorial.md as a reader follows it: its KBs, its job file, `kdmkb check`, then its Python block as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kdmkb.services.cli import app
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"


def _block(language: str) -> str:
    [code] = re.findall(rf"```{language}\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), flags=re.DOTALL)
    return code


@pytest.mark.slow  # two jobs of three KBs (the baseline, then cooperative): about a minute
def test_the_tutorial_runs_as_written(tmp_path, ray_session, monkeypatch):
    monkeypatch.chdir(tmp_path)
    split_dataset(dataset_dir("nations"), tmp_path / "my-kbs", kbs=3, seed=0)  # what its `kdmkb split` line makes
    (tmp_path / "my-kbs" / "job.toml").write_text(_block("toml"), encoding="utf-8")
    checked = CliRunner().invoke(app, ["check", "my-kbs/job.toml"])
    assert checked.exit_code == 0 and checked.stdout.splitlines()[-1] == "my-kbs/job.toml: ok", checked.output
    assert "kb kb3: complex" in checked.stdout

    names: dict = {}
    exec(compile(_block("python"), str(TUTORIAL), "exec"), names)  # noqa: S102 - the tutorial's own code
    result = names["result"]
    assert [record["kb"] for record in result.metrics_records] == ["kb1", "kb2", "kb3"]
    assert result.baseline is not None and result.baseline.strategy == "none"
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "my-run-py" / "valid_mrr.png").is_file()
    saved = np.load(tmp_path / "kb3-entities.npz")
    assert saved["vectors"].shape == (len(saved["names"]), names["vectors"].entity_vectors.shape[1])
    assert names["again"].report == result.report
