"""The server's limits: one settings model (``kdmkb serve --limit NAME=VALUE``), and the stream slots it bounds.

A request over a limit is refused with the limit's name: INVALID_ARGUMENT for a setting or file
out of range, RESOURCE_EXHAUSTED for the server's capacity (KBs, open streams).
"""

from __future__ import annotations

import contextlib
import threading

from pydantic import Field

from kdmkb.services.config import Strict, validate
from kdmkb.services.errors import ConfigError, DataError, LimitError

GIB = 2**30


class Limits(Strict):
    """What one coordinator accepts; the defaults fit a single machine with a few KBs of up to Wikidata5M's size."""

    max_kbs: int = Field(64, gt=0, description="KBs registered at once (each is a worker process with its data in memory).")
    max_file_bytes: int = Field(2 * GIB, gt=0, description="Size of each triple file of a KB folder (train, valid, test, known), in bytes.")
    max_triples: int = Field(25_000_000, gt=0, description="Triples of each triple file of a KB folder.")
    max_dim: int = Field(65536, gt=0, description="A worker type's embedding size (settings.dim).")
    max_batch_size: int = Field(65536, gt=0, description="A worker's batch_size and eval_batch_size.")
    max_threads: int = Field(64, gt=0, description="A worker's torch threads (settings.threads).")
    max_message_bytes: int = Field(64 * 2**20, gt=0, description="Size of a gRPC message the server sends or receives.")
    max_label_bytes: int = Field(64 * 2**20, gt=0, description="Size of one SoftLabels message between KB workers (a Ray object); a round's labels for a student travel as several, cut between steps.")
    max_streams: int = Field(256, gt=0, description="WatchJob streams open at once; each holds one server thread.")
    unary_threads: int = Field(32, gt=0, description="Server threads kept for unary calls (health, GetJob, Predict, ...) beside the streams.")

    @classmethod
    def parse(cls, pairs: list[str]) -> Limits:
        """Limits from ``NAME=VALUE`` strings (the serve command's ``--limit``); a bad one raises :class:`ConfigError` naming it."""
        raw = {}
        for pair in pairs:
            name, equals, value = pair.partition("=")
            if not equals:
                raise ConfigError(f"--limit: {pair!r} is not NAME=VALUE; the limits are {', '.join(cls.model_fields)}")
            raw[name.strip()] = value.strip()
        return validate(cls, raw, prefix="limit")

    def check_settings(self, settings: dict) -> None:
        """A worker's settings within the server's ranges; raises :class:`ConfigError` naming the setting and the limit."""
        for field, limit in (("dim", "max_dim"), ("batch_size", "max_batch_size"), ("eval_batch_size", "max_batch_size"), ("threads", "max_threads")):
            value = settings.get(field)
            if isinstance(value, int) and value > getattr(self, limit):
                raise ConfigError(f"settings.{field}: {value} is over the server's limit {limit} = {getattr(self, limit)}")

    def check_file(self, path, size: int | None = None, triples: int | None = None) -> None:
        """A triple file within ``max_file_bytes`` and ``max_triples``; raises :class:`DataError` naming the file and the limit."""
        if size is not None and size > self.max_file_bytes:
            raise DataError(f"{path}: {size} bytes, over the server's limit max_file_bytes = {self.max_file_bytes}")
        if triples is not None and triples > self.max_triples:
            raise DataError(f"{path}: more than the server's limit max_triples = {self.max_triples} triples")


class StreamSlots:
    """At most ``limit`` streams open at once: beyond it a stream is refused at once (never queued behind the others)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def open(self, method: str):
        if not self._free.acquire(blocking=False):
            raise LimitError(f"{method}: {self.limit} streams are open, the server's limit max_streams; retry later")
        try:
            yield
        finally:
            self._free.release()
