"""Per-entity feature matrices for a KB folder (``features/<modality>.npy`` + ``<modality>.entities.tsv``; docs/data.md).

``text``: each entity's name and description encoded by an offline encoder (mean-pooled over its
tokens). ``numeric``: ``entity<TAB>attribute<TAB>value`` literals, min-max normalised per
attribute, beside a presence flag per attribute. Entities with nothing to encode get no row: the
KB records them as missing, and each worker type says what it does with them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kdmkb.kb_worker.data import load_kb
from kdmkb.services.errors import DataError
from kdmkb.services.tsv import read_rows, write_rows


def write_features(kb_dir: Path, modality: str, names: list[str], values: np.ndarray) -> Path:
    """Writes the matrix and its row order; returns the ``.npy`` path. Nothing is left half-written."""
    folder = Path(kb_dir) / "features"
    folder.mkdir(exist_ok=True)
    matrix, order = folder / f"{modality}.npy", folder / f"{modality}.entities.tsv"
    temporary = folder / f".{modality}.npy.tmp"
    with temporary.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(values, dtype=np.float32))
    write_rows(order, [(name,) for name in names])
    temporary.replace(matrix)
    return matrix


def numeric_features(kb_dir: Path, literals: Path) -> tuple[Path, dict]:
    """``features/numeric.npy``: per attribute a value in [0, 1] (min-max over the KB's entities; the mean of several) and a presence flag.

    Literals of entities the KB does not have are skipped and counted.
    """
    kb = load_kb(kb_dir)
    literal_values: dict[tuple[int, str], list[float]] = {}
    skipped = 0
    for number, (entity, attribute, value) in read_rows(Path(literals), 3):
        local = kb.entities.index.get(entity)
        if local is None:
            skipped += 1
            continue
        try:
            number_value = float(value)
        except ValueError:
            raise DataError(f"{literals} line {number}: value {value!r} is not a number") from None
        if not math.isfinite(number_value):
            raise DataError(f"{literals} line {number}: value {value!r} is not finite")
        literal_values.setdefault((local, attribute), []).append(number_value)
    if not literal_values:
        raise DataError(f"{literals}: no literal names an entity of the KB in {kb_dir}")
    attributes = sorted({attribute for _, attribute in literal_values})
    column = {attribute: i for i, attribute in enumerate(attributes)}
    entities = sorted({local for local, _ in literal_values})
    row = {local: i for i, local in enumerate(entities)}
    values = np.zeros((len(entities), len(attributes)), dtype=np.float64)
    present = np.zeros_like(values, dtype=bool)
    for (local, attribute), seen in literal_values.items():
        values[row[local], column[attribute]] = sum(seen) / len(seen)
        present[row[local], column[attribute]] = True
    low = np.where(present, values, np.inf).min(axis=0)
    high = np.where(present, values, -np.inf).max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    normalised = np.where(present, (values - low) / span, 0.0)
    normalised = np.where(present & (high == low), 0.5, normalised)  # an attribute with one value carries presence only
    path = write_features(kb_dir, "numeric", [kb.entities.names[e] for e in entities], np.concatenate([normalised, present], axis=1))
    return path, {"entities": len(entities), "attributes": len(attributes), "skipped_literals": skipped, "missing_entities": len(kb.entities) - len(entities)}


def text_features(kb_dir: Path, encoder: str = "", batch_size: int = 64, max_length: int = 128) -> tuple[Path, dict]:
    """``features/text.npy``: each entity's ``name, description`` mean-pooled by the encoder (MiniLM by default)."""
    import torch

    from kdmkb.kb_worker.worker_types.text import load_encoder

    kb = load_kb(kb_dir)
    if kb.entity_text is None:
        raise DataError(f"{kb_dir}: no entity_text.tsv to encode")
    texts = kb.entity_text
    entities = [i for i in range(len(kb.entities)) if texts.present[i]]
    sentences = [f"{texts.names[i]}, {texts.descriptions[i]}" if texts.descriptions[i] else texts.names[i] for i in entities]
    tokenizer, model = load_encoder(encoder)
    model.eval()
    pooled = []
    with torch.no_grad():
        for start in tqdm(range(0, len(sentences), batch_size), desc="encoding entity texts", unit="batch"):
            batch = tokenizer(sentences[start : start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled.append((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1))
    values = torch.cat(pooled).numpy()
    path = write_features(kb_dir, "text", [kb.entities.names[e] for e in entities], values)
    return path, {"entities": len(entities), "dim": int(values.shape[1]), "missing_entities": len(kb.entities) - len(entities)}
