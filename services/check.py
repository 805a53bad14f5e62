"""``kdmkb check``: a job file, its worker settings, its KBs' data and its alignments, validated here before any Ray starts.

The same validators the coordinator and the workers run (the job file's models, ``load_job_file``,
``load_kb``, ``build_pair``), so a file that passes is one the coordinator accepts.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from kdmkb.services.config import JobFile, load_job_file
from kdmkb.services.errors import ConfigError, KdmkbError

KB_FIELD = re.compile(r"kb(?:\[(\d+)\]|\.(\d+))[.:]")


@dataclass
class CheckReport:
    """What ``check_job`` found: each KB's sizes, each alignment's aligned counts, and every problem, named by KB."""

    job_file: JobFile
    kbs: dict[str, dict] = field(default_factory=dict)
    alignments: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ok": not self.errors, "strategy": self.job_file.strategy, "kbs": self.kbs, "alignments": self.alignments, "errors": self.errors}


def check_job(path: Path | str) -> CheckReport:
    """Validates the job file (a :class:`ConfigError` if the file itself is bad), then every KB and alignment, collecting their errors."""
    from kdmkb.coordinator.alignment import build_pair
    from kdmkb.kb_worker.data import load_kb

    try:
        job_file = load_job_file(path)
    except ConfigError as error:
        raise ConfigError(_naming_kbs(str(error), path)) from None
    report = CheckReport(job_file)
    vocabularies = {}
    for entry in job_file.kb:
        try:
            kb = load_kb(entry.data)
        except KdmkbError as error:
            report.errors.append(f"kb {entry.name!r} ({entry.data}): {error}")
            continue
        vocabularies[entry.name] = {"entity": list(kb.entities.names), "relation": list(kb.relations.names)}
        report.kbs[entry.name] = {
            "worker_type": entry.worker_type,
            "entities": len(kb.entities),
            "relations": len(kb.relations),
            **{split: len(kb.split(split)) for split in ("train", "valid", "test")},
        }
    for index, alignment in enumerate(job_file.alignment):
        kb_a, kb_b = alignment.kbs
        where = f"alignment[{index}] {kb_a!r} <-> {kb_b!r}"
        unknown = [name for name in (kb_a, kb_b) if name not in {entry.name for entry in job_file.kb}]
        if unknown:
            report.errors.append(f"{where}: kbs: {', '.join(map(repr, unknown))} is not a KB of this job file")
            continue
        if kb_a not in vocabularies or kb_b not in vocabularies:
            continue  # its KB's own error is reported above
        missing = [f"{name}: file {str(file)!r} not found" for name, file in (("entities", alignment.entities), ("relations", alignment.relations)) if file and not file.is_file()]
        if missing:
            report.errors.extend(f"{where}: {problem}" for problem in missing)
            continue
        try:
            pair = build_pair(kb_a, kb_b, vocabularies[kb_a], vocabularies[kb_b], str(alignment.entities or ""), str(alignment.relations or ""))
        except KdmkbError as error:
            report.errors.append(f"{where}: {error}")
            continue
        report.alignments.append({"kbs": [kb_a, kb_b], "entities": len(pair.entities), "relations": len(pair.relations)})
    return report


def _naming_kbs(message: str, path: Path | str) -> str:
    """Each ``kb[N]...`` / ``kb.N...`` problem of a job file's message prefixed with that KB's name (``kb 'wiki': kb[0].settings.dim: ...``)."""
    try:
        entries = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("kb", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return message
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in entries] if isinstance(entries, list) else []
    parts = []
    for part in message.split("; "):
        match = KB_FIELD.match(part)
        index = int(match.group(1) or match.group(2)) if match else None
        parts.append(f"kb {names[index]!r}: {part}" if index is not None and index < len(names) and names[index] else part)
    return "; ".join(parts)
