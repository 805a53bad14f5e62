"""A benchmark runner that trains in its own process runs under the KB workers' environment, set before it starts."""

import os
import subprocess
import sys
from pathlib import Path

from kdmkb.services.ray_runtime import WORKER_ENV

BENCH = Path(__file__).resolve().parents[2] / "bench"

SCRIPT = f"""
import os, sys
sys.path.insert(0, {str(BENCH)!r})
import _common
print("started", sys.argv[1:], flush=True)
if __name__ == "__main__":
    _common.with_worker_environment()
    print("environment", [os.environ.get(key) for key in {sorted(WORKER_ENV)!r}])
"""


def _run(tmp_path: Path, environment: dict) -> list[str]:
    script = tmp_path / "runner.py"
    script.write_text(SCRIPT, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), "--rows", "a b"], env=environment, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.splitlines()


def test_a_runner_without_the_environment_starts_again_under_it_with_its_arguments(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key not in WORKER_ENV}
    lines = _run(tmp_path, environment)
    assert lines == ["started ['--rows', 'a b']", "started ['--rows', 'a b']", f"environment {[WORKER_ENV[key] for key in sorted(WORKER_ENV)]}"]


def test_a_runner_keeps_what_its_environment_already_says_and_starts_once(tmp_path):
    environment = {**os.environ, **WORKER_ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}
    lines = _run(tmp_path, environment)
    expected = [("65536" if key == "MALLOC_MMAP_THRESHOLD_" else WORKER_ENV[key]) for key in sorted(WORKER_ENV)]
    assert lines == ["started ['--rows', 'a b']", f"environment {expected}"]
