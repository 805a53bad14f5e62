"""The coordinator's persistent state: KB registrations, alignments and jobs as JSON in a data directory.

Without a data directory (tests, throw-away runs) nothing is persisted.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class Store:
    """Writes each record atomically (temporary file + rename) so a crash never leaves half a file."""

    def __init__(self, root: Path | str | None) -> None:
        self.root = Path(root) if root else None
        self._lock = threading.Lock()
        if self.root:
            (self.root / "jobs").mkdir(parents=True, exist_ok=True)

    def _path(self, *parts: str) -> Path | None:
        return self.root.joinpath(*parts) if self.root else None

    def _write(self, path: Path | None, value) -> None:
        if path is None:
            return
        with self._lock:
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_text(json.dumps(value, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(temporary, path)

    @staticmethod
    def _read(path: Path | None, default):
        if path is None or not path.is_file():
            return default
        return json.loads(path.read_text(encoding="utf-8"))

    def save_kbs(self, kbs: dict) -> None:
        self._write(self._path("kbs.json"), kbs)

    def load_kbs(self) -> dict:
        return self._read(self._path("kbs.json"), {})

    def save_alignments(self, alignments: list) -> None:
        self._write(self._path("alignments.json"), alignments)

    def load_alignments(self) -> list:
        return self._read(self._path("alignments.json"), [])

    def save_job(self, job: dict) -> None:
        self._write(self._path("jobs", f"{job['job_id']}.json"), job)

    def load_jobs(self) -> list[dict]:
        jobs = self._path("jobs")
        return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(jobs.glob("*.json"))] if jobs else []

    def save_scrape_targets(self, targets: list[dict]) -> None:
        """Prometheus file-based service discovery of the workers: a worker that moves is still scraped."""
        self._write(self._path("prometheus_targets.json"), targets)

    def checkpoint_dir(self, job_id: str, kb: str) -> Path | None:
        return self._path("checkpoints", job_id, kb)
