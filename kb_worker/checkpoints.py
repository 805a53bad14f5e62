"""A KB worker's checkpoint on disk: written atomically, and refused whole when damaged or foreign."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from kdmkb.kb_worker.worker_types.base import RUNTIME_SETTINGS
from kdmkb.services.errors import DataError

CHECKPOINT_FILE = "checkpoint.pt"
REQUIRED = frozenset({"kb", "worker_type", "settings", "model", "optimizer", "step"})


def model_settings(settings: dict) -> dict:
    """The settings that shape what a model learns; a checkpoint fits any runtime settings."""
    return {key: value for key, value in settings.items() if key not in RUNTIME_SETTINGS}


def write(directory: str | Path, state: dict) -> str:
    """Writes ``state`` to ``directory/checkpoint.pt`` through a temporary file, so a crash leaves the old one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    temporary = directory / f".{CHECKPOINT_FILE}.tmp"
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, directory / CHECKPOINT_FILE)
    return str(directory / CHECKPOINT_FILE)


def read(directory: str | Path, kb: str, worker_type: str, settings: dict) -> dict:
    """The checkpoint of ``kb`` in ``directory``; raises :class:`DataError` naming the file when it is missing, damaged or of another model."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise DataError(f"{path}: corrupt checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or REQUIRED - state.keys():
        raise DataError(f"{path}: not a kdmkb checkpoint")
    if state["worker_type"] != worker_type or model_settings(state["settings"] or {}) != model_settings(settings):
        raise DataError(f"{path}: checkpoint is of a {state['worker_type']!r} worker with other settings than KB {kb!r}")
    return state
