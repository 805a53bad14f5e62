"""A KB worker's checkpoints on disk: one file per round, the last few kept, written atomically, refused whole when damaged or foreign.

A checkpoint also carries the process's random generators, so a job resumed from it draws what
an uninterrupted run would have drawn. Beside them, a long ranking's progress
(``ranking-<split>.pt``), taken up again only by a ranking of the same weights and settings.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from kdmkb.kb_worker.ranking import PartialRanking
from kdmkb.kb_worker.worker_types.base import RUNTIME_SETTINGS
from kdmkb.services.errors import DataError

log = logging.getLogger(__name__)

REQUIRED = frozenset({"kb", "worker_type", "settings", "model", "optimizer", "step", "updates", "training_state", "schedule", "teacher", "random"})


def path(directory: str | Path, round_: int) -> Path:
    """The checkpoint of round ``round_`` (written after that many rounds) in ``directory``."""
    return Path(directory) / f"round-{round_:06d}.pt"


def model_settings(settings: dict) -> dict:
    """The settings that shape what a model learns; a checkpoint fits any runtime settings."""
    return {key: value for key, value in settings.items() if key not in RUNTIME_SETTINGS}


def random_state() -> dict:
    """Every generator a worker process draws from (torch, CUDA, numpy, python), in a form ``torch.load(weights_only=True)`` reads."""
    numpy = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)), "pos": numpy["state"]["pos"], "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]},
        "python": random.getstate(),
    }


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    random.setstate(state["python"])


def write(directory: str | Path, round_: int, state: dict, keep: int) -> str:
    """Writes round ``round_``'s checkpoint through a temporary file (a crash leaves the older ones) and keeps the last ``keep``."""
    directory = Path(directory)
    target = path(directory, round_)
    _write_whole(target, state)
    for old in sorted(directory.glob("round-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return str(target)


def _write_whole(target: Path, state: dict) -> None:
    """``torch.save(state)`` to ``target`` through a temporary file: a crash leaves the old file or none, never half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    temporary = target.parent / f".{target.name}.tmp"
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, target)


def same_model_settings(stored: dict, settings: BaseModel) -> bool:
    """Whether a checkpoint's ``stored`` settings are ``settings`` (runtime ones aside), read as ``settings``' class reads them:
    a setting added since the checkpoint was written holds its default there, so a checkpoint outlives a release that adds one."""
    try:
        then = type(settings).model_validate(stored)
    except ValidationError:  # a setting since removed, or a value no longer accepted
        return False
    return model_settings(then.model_dump()) == model_settings(settings.model_dump())


def read(directory: str | Path, round_: int, kb: str, worker_type: str, settings: BaseModel) -> dict:
    """Round ``round_``'s checkpoint of ``kb``; raises :class:`DataError` naming the file when it is missing, damaged or of another model."""
    file = path(directory, round_)
    if not file.is_file():
        raise DataError(f"{file}: checkpoint not found")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        reason = str(error).split(". ", 1)[0]  # torch's first sentence (its messages run to paragraphs)
        raise DataError(f"{file}: corrupt checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict) or REQUIRED - state.keys():
        raise DataError(f"{file}: not a kdmkb checkpoint")
    if state["kb"] != kb:
        raise DataError(f"{file}: checkpoint is of KB {state['kb']!r}, not of KB {kb!r}")
    if state["worker_type"] != worker_type or not same_model_settings(state["settings"] or {}, settings):
        raise DataError(f"{file}: checkpoint is of a {state['worker_type']!r} worker with other settings than KB {kb!r}")
    return state


def ranking_path(directory: str | Path, split: str) -> Path:
    """Where a ranking of ``split`` keeps its progress in ``directory``."""
    return Path(directory) / f"ranking-{split}.pt"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A digest of every weight and buffer of ``module``: a ranking's progress holds only for the weights that made it."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_ranking(directory: str | Path, split: str, key: dict, part: PartialRanking) -> None:
    """Saves the ranking so far of ``split``; ``key`` says what it ranks (weights, settings), see :func:`read_ranking`."""
    state = {"key": key, "batches": part.batches, "seconds": part.seconds, "ranks": part.ranks, "targets": part.targets, "retrieved": part.retrieved}
    _write_whole(ranking_path(directory, split), state)


def read_ranking(directory: str | Path, split: str, key: Callable[[], dict]) -> PartialRanking | None:
    """The saved progress of a ranking with this very key; None (ranked from the start) when there is none, or it is damaged or of another key.

    ``key`` is called only when a saved file is there: its weights' digest is a pass over every weight.
    """
    file = ranking_path(directory, split)
    if not file.is_file():
        return None
    wanted = key()
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        part = PartialRanking(int(state["batches"]), float(state["seconds"]), list(state["ranks"]), list(state["targets"]), list(state["retrieved"]))
        queries = 2 * part.batches  # a tail and a head query per triple
        if state["key"] != wanted or len(part.ranks) != queries or len(part.targets) != queries or len(part.retrieved) not in (0, queries):
            raise ValueError("of other weights or settings" if state["key"] != wanted else "inconsistent")
        if not all(isinstance(t, torch.Tensor) for t in (*part.ranks, *part.targets, *part.retrieved)):
            raise ValueError("inconsistent")
    except Exception as error:  # torch raises many types for a damaged file
        log.warning("%s: a ranking's progress not taken up (%s: %s); ranking from the first query", file, type(error).__name__, str(error).split(". ", 1)[0])
        return None
    return part
