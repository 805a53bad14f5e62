"""kdmkb: knowledge bases that teach each other their embeddings, one Ray actor per KB, a gRPC coordinator.

The Python API (docs/api.md) is at the top: :func:`split` a dataset into KBs, :func:`run` a job,
:func:`load` a saved result. The repository keeps its rooms at the top (``services/``, ``protos/``,
``kb_worker/``, ``coordinator/``); the installed distribution puts them under this one namespace, as
``kdmkb.services``, ``kdmkb.protos``, ``kdmkb.kb_worker`` and ``kdmkb.coordinator``
(``pyproject.toml``'s package-dir mapping), so that no generic top-level name is installed.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("kdmkb")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from kdmkb.services.api import JobDetached, Prediction, Result, Split, load, run, split
    from kdmkb.services.config import JobFile
    from kdmkb.services.datasets import dataset_dir
    from kdmkb.services.outputs import Embeddings

# Where each public name lives; imported on first use, so that `import kdmkb` (every Ray worker
# does) stays light.
_EXPORTS = {
    **dict.fromkeys(("JobDetached", "Prediction", "Result", "Split", "load", "run", "split"), "kdmkb.services.api"),
    "JobFile": "kdmkb.services.config",
    "dataset_dir": "kdmkb.services.datasets",
    "Embeddings": "kdmkb.services.outputs",
}

__all__ = ["Embeddings", "JobDetached", "JobFile", "Prediction", "Result", "Split", "__version__", "dataset_dir", "load", "run", "split"]


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdmkb' has no attribute {name!r}")
