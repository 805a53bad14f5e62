"""A job's per-round history, gathered from its WatchJob events and written as JSON lines and CSV.

The events carry running totals (bytes exchanged, triples trained); a round's record holds what
that round added, and the validation metrics when the round ended with an evaluation.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.client import REPORT_KEYS, metrics_dict
from kdmkb.services.errors import DataError

# Running totals of KBProgress that a round's record holds as that round's share.
COUNTERS = ("soft_label_bytes_sent", "soft_label_bytes_received", "query_bytes_sent", "query_bytes_received", "train_triples", "train_seconds")
VALID_COLUMNS = tuple(f"valid_{key}" for key, _ in REPORT_KEYS)
CSV_COLUMNS = ("round", "kb", "round_seconds", "loss", "kd_loss", "steps", *COUNTERS, *VALID_COLUMNS)


@dataclass(frozen=True)
class KBRound:
    """One KB in one round: its mean losses over the round's steps, its step count so far, what the round exchanged and trained."""

    loss: float
    kd_loss: float
    steps: int
    soft_label_bytes_sent: int
    soft_label_bytes_received: int
    query_bytes_sent: int
    query_bytes_received: int
    train_triples: int
    train_seconds: float
    valid: dict | None = None  # the report's metrics (mrr, mr, hits@k) when the round ended with a validation


@dataclass(frozen=True)
class Round:
    """One round of a job (``round`` counts from 1) and how long it took."""

    round: int
    seconds: float
    kbs: dict[str, KBRound]

    def to_dict(self) -> dict:
        return {"round": self.round, "seconds": self.seconds, "kbs": {kb: asdict(record) for kb, record in self.kbs.items()}}

    @classmethod
    def from_dict(cls, raw: dict) -> Round:
        return cls(round=int(raw["round"]), seconds=float(raw["seconds"]), kbs={kb: KBRound(**values) for kb, values in raw["kbs"].items()})

    def rows(self) -> list[dict]:
        """The round as flat rows, one per KB, with :data:`CSV_COLUMNS` as keys (None where not evaluated)."""
        rows = []
        for kb, record in self.kbs.items():
            valid = record.valid or {}
            rows.append(
                {
                    "round": self.round,
                    "kb": kb,
                    "round_seconds": self.seconds,
                    "loss": record.loss,
                    "kd_loss": record.kd_loss,
                    "steps": record.steps,
                    **{counter: getattr(record, counter) for counter in COUNTERS},
                    **{column: valid.get(key) for column, (key, _) in zip(VALID_COLUMNS, REPORT_KEYS)},
                }
            )
        return rows


class HistoryRecorder:
    """Turns a job's event stream into :class:`Round` records: call :meth:`observe` with every event."""

    def __init__(self) -> None:
        self.rounds: list[Round] = []
        self._totals: dict[str, dict[str, float]] = {}
        self._valid: dict[str, dict] = {}

    def observe(self, event: pb.JobEvent) -> None:
        if event.kind == "evaluated":
            self._valid = {kb: metrics_dict(progress.valid) for kb, progress in event.progress.items()}
        elif event.kind == "round":
            kbs = {}
            for kb, progress in sorted(event.progress.items()):
                before = self._totals.get(kb, {})
                added = {counter: getattr(progress, counter) - before.get(counter, 0) for counter in COUNTERS}
                kbs[kb] = KBRound(loss=progress.loss, kd_loss=progress.kd_loss, steps=progress.steps, valid=self._valid.pop(kb, None), **added)
            self.rounds.append(Round(round=event.round, seconds=event.round_seconds, kbs=kbs))
        if event.kind in ("state", "started", "round"):
            # The totals a round's share is taken from; a resumed job's first event has those of its earlier rounds.
            # ("evaluated" comes between a round's training and its "round" event, with that round's totals.)
            self._totals = {kb: {counter: getattr(progress, counter) for counter in COUNTERS} for kb, progress in event.progress.items()}


def write_jsonl(path: Path, rounds: Iterable[Round]) -> Path:
    """One JSON object per round (:meth:`Round.to_dict`)."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in rounds:
            handle.write(json.dumps(record.to_dict()) + "\n")
    return Path(path)


def read_jsonl(path: Path) -> list[Round]:
    """The rounds :func:`write_jsonl` wrote; a damaged line is a :class:`DataError` naming file and line."""
    rounds = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rounds.append(Round.from_dict(json.loads(line)))
            except (ValueError, TypeError, KeyError) as error:
                raise DataError(f"{path} line {number}: not a history record ({type(error).__name__}: {error})") from None
    return rounds


def write_csv(path: Path, rounds: Iterable[Round]) -> Path:
    """One row per round and KB (:data:`CSV_COLUMNS`); a round without validation leaves its ``valid_*`` cells empty."""
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for record in rounds:
            writer.writerows(record.rows())
    return Path(path)
