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

from kdmkb.kb_worker.data import MODALITY_PATTERN, load_kb, unique_rows
from kdmkb.services.errors import ConfigError, DataError
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


def text_features(
    kb_dir: Path, encoder: str = "", batch_size: int = 64, max_length: int = 128, texts: Path | None = None, name: str = "text", columns: tuple[int, int, int] = (1, 2, 3), header: bool = False
) -> tuple[Path, dict]:
    """``features/<name>.npy``: each entity's ``name, description`` mean-pooled by the encoder (MiniLM by default).

    The texts are the KB's ``entity_text.tsv``, or ``texts``: a TSV file whose ``columns`` (1-based)
    hold the entity id, its name and its description (which may be empty), after a header line
    with ``header`` (FB15k-237's ``entity_wikidata.tsv``: columns 1, 3, 4 and a header). Rows of
    entities the KB does not have are skipped and counted.
    """
    import torch

    from kdmkb.kb_worker.worker_types.text import load_encoder

    if not MODALITY_PATTERN.fullmatch(name):
        raise ConfigError(f"name: {name!r} is not a modality name (letters, digits, '_', '-'; starts with a letter or digit)")
    kb = load_kb(kb_dir)
    if texts is None:
        if kb.entity_text is None:
            raise DataError(f"{kb_dir}: no entity_text.tsv to encode")
        names, descriptions, present, skipped = kb.entity_text.names, kb.entity_text.descriptions, kb.entity_text.present, 0
    else:
        names, descriptions, present, skipped = _read_text_columns(Path(texts), kb.entities.index, columns, header)
    entities = [i for i in range(len(kb.entities)) if present[i]]
    sentences = [f"{names[i]}, {descriptions[i]}" if descriptions[i] else names[i] for i in entities]
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
    path = write_features(kb_dir, name, [kb.entities.names[e] for e in entities], values)
    return path, {"entities": len(entities), "dim": int(values.shape[1]), "missing_entities": len(kb.entities) - len(entities), "skipped_rows": skipped}


def _read_text_columns(path: Path, index: dict[str, int], columns: tuple[int, int, int], header: bool) -> tuple[list[str], list[str], np.ndarray, int]:
    """Names, descriptions and presence by local id from the ``columns`` (1-based: id, name, description) of a TSV file, and the rows of unknown ids."""
    if len(columns) != 3 or min(columns) < 1:
        raise ConfigError(f"columns: three 1-based column numbers (id, name, description), got {columns}")
    id_column, name_column, description_column = (c - 1 for c in columns)
    names, descriptions = [""] * len(index), [""] * len(index)
    present = np.zeros(len(index), dtype=bool)
    skipped = 0
    rows = read_rows(path, max(columns), extra_columns=True, last_may_be_empty=description_column == max(columns) - 1)
    picked = ((number, [fields[id_column], fields[name_column], fields[description_column]]) for number, fields in rows if not (header and number == 1))
    for _, (entity, name, description) in unique_rows(path, picked, "entity"):
        local = index.get(entity)
        if local is None:
            skipped += 1
            continue
        names[local], descriptions[local], present[local] = name, description, True
    return names, descriptions, present, skipped


def missing_entities(names: list[str], rate: float, seed: int) -> list[str]:
    """``round(rate x len(names))`` of ``names``, drawn without replacement from ``seed``: the entities a missing-modality
    experiment strips of every feature modality at once (DSoM's Fig. 4 drops the same rate of texts and images)."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"rate: a fraction of the entities in [0, 1], got {rate}")
    chosen = np.random.default_rng(seed).choice(len(names), size=round(rate * len(names)), replace=False)
    return [names[i] for i in sorted(chosen)]


def drop_feature_rows(kb_dir: Path, out_dir: Path, modalities: list[str], dropped: list[str]) -> dict[str, int]:
    """Writes each of ``modalities`` of ``kb_dir`` into ``out_dir/features`` without the rows of the ``dropped`` entities, which
    the KB in ``out_dir`` then records as missing; returns each modality's rows left."""
    kb = load_kb(kb_dir)
    keep = np.ones(len(kb.entities), dtype=bool)
    keep[kb.entities.ids(dropped, what="entity")] = False
    left = {}
    for modality in modalities:
        if modality not in kb.features:
            raise DataError(f"{kb_dir}: no features/{modality}.npy to drop rows from")
        features = kb.features[modality]
        rows = np.flatnonzero(features.present & keep)
        write_features(out_dir, modality, [kb.entities.names[e] for e in rows], features.values[rows])
        left[modality] = len(rows)
    return left
