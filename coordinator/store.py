"""The coordinator's persistent state: KB registrations, alignments and jobs as JSON in a data directory.

Without a data directory (tests, throw-away runs) nothing is persisted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


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
    def set_aside(path: Path, reason: str) -> Path:
        """Renames a damaged record to ``<name>.corrupt-<timestamp>`` (kept for a person to read) so the rest still loads."""
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}")
        os.replace(path, aside)
        log.error("%s: %s; set aside as %s", path, reason, aside.name)
        return aside

    def _read(self, path: Path | None, default, convert: Callable = lambda value: value):
        """The record at ``path`` through ``convert``, or ``default`` when it is missing or damaged (then set aside)."""
        if path is None or not path.is_file():
            return default
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(value, type(default)):
                raise TypeError(f"a JSON {type(value).__name__}, not a {type(default).__name__}")
            return convert(value)
        except (ValueError, TypeError, KeyError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.set_aside(path, f"unreadable ({type(error).__name__}: {error})")
            return default

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

    def load_jobs(self, convert: Callable[[dict], object]) -> list:
        """Every job record through ``convert`` (which raises on a record it cannot use); damaged ones are set aside."""
        jobs = self._path("jobs")
        loaded = [self._read(path, {}, convert) for path in sorted(jobs.glob("*.json"))] if jobs else []
        return [job for job in loaded if job != {}]

    def save_scrape_targets(self, targets: list[dict]) -> None:
        """Prometheus file-based service discovery of the workers: a worker that moves is still scraped."""
        self._write(self._path("prometheus_targets.json"), targets)

    def checkpoint_dir(self, job_id: str, kb: str) -> Path | None:
        return self._path("checkpoints", job_id, kb)
