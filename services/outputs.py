"""What a finished run leaves on disk besides its history: embeddings with their metadata, and plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdmkb.services.errors import DataError
from kdmkb.services.history import Round

KINDS = ("entity", "relation")
# name -> (y-axis label, what of a KB's round it plots)
PLOTS = {
    "loss": ("training loss (mean over the round's steps)", lambda record: record.loss),
    "valid_mrr": ("validation MRR (filtered)", lambda record: record.valid["mrr"] if record.valid else None),
}


@dataclass(frozen=True, eq=False)
class Embeddings:
    """One KB's exported vectors: rows of ``entity_vectors`` follow ``entity_names`` (likewise for relations).

    ``layout`` says what the columns hold per kind (the worker type's ``embedding_layout``, such as
    ComplEx's ``[real | imaginary]`` halves).
    """

    kb: str
    worker_type: str
    layout: dict[str, str]
    entity_names: list[str]
    entity_vectors: np.ndarray
    relation_names: list[str]
    relation_vectors: np.ndarray

    def metadata(self) -> dict:
        return {
            "kb": self.kb,
            "worker_type": self.worker_type,
            "layout": self.layout,
            "shapes": {kind: list(getattr(self, f"{kind}_vectors").shape) for kind in KINDS},
        }

    def save(self, path: Path) -> Path:
        """An ``.npz`` of ``<kind>_names``, ``<kind>_vectors`` and ``metadata`` (a JSON string), readable without pickle."""
        arrays = {"metadata": np.asarray(json.dumps(self.metadata()))}
        for kind in KINDS:
            arrays[f"{kind}_names"] = np.asarray(getattr(self, f"{kind}_names"), dtype=str)
            arrays[f"{kind}_vectors"] = getattr(self, f"{kind}_vectors")
        np.savez(path, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> Embeddings:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                metadata = json.loads(str(arrays["metadata"]))
                parts = {f"{kind}_{what}": arrays[f"{kind}_{what}"] for kind in KINDS for what in ("names", "vectors")}
        except (OSError, ValueError, KeyError) as error:
            raise DataError(f"{path}: not a kdmkb embeddings file ({type(error).__name__}: {error})") from None
        return cls(
            kb=metadata["kb"],
            worker_type=metadata["worker_type"],
            layout=metadata["layout"],
            entity_names=parts["entity_names"].tolist(),
            entity_vectors=parts["entity_vectors"],
            relation_names=parts["relation_names"].tolist(),
            relation_vectors=parts["relation_vectors"],
        )


def draw(axes, plot: str, rounds: Sequence[Round], label: str, baseline: Sequence[Round] = (), baseline_label: str = "") -> None:
    """One line per KB of ``plot`` (a key of :data:`PLOTS`) over the rounds; the baseline's dashed in the same colour."""
    ylabel, value = PLOTS[plot]
    drawn = False
    for kb in sorted({kb for record in rounds for kb in record.kbs}):
        line = None
        for series, name, style in ((rounds, label, "-"), (baseline, baseline_label, "--")):
            points = [(record.round, value(record.kbs[kb])) for record in series if kb in record.kbs]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                xs, ys = zip(*points)
                line = axes.plot(xs, ys, style, marker="o" if len(xs) < 20 else None, label=f"{kb} ({name})", color=None if line is None else line[0].get_color())
                drawn = True
    if not drawn:
        axes.text(0.5, 0.5, "no validation rounds: set eval_every" if plot == "valid_mrr" else "no rounds", ha="center", va="center", transform=axes.transAxes)
    else:
        axes.legend(fontsize="small")
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def figure(plots: Sequence[str], rounds: Sequence[Round], label: str, baseline: Sequence[Round] = (), baseline_label: str = ""):
    """A matplotlib figure with one panel per plot, side by side (no pyplot: nothing global changes)."""
    from matplotlib.figure import Figure

    result = Figure(figsize=(6.4 * len(plots), 4.2), layout="constrained")
    for axes, plot in zip(np.atleast_1d(result.subplots(1, len(plots))), plots):
        draw(axes, plot, rounds, label, baseline, baseline_label)
    return result
