"""kdmkb: knowledge bases that teach each other their embeddings, one Ray actor per KB, a gRPC coordinator.

The repository keeps its rooms at the top (``services/``, ``protos/``, ``kb_worker/``,
``coordinator/``); the installed distribution puts them under this one namespace, as
``kdmkb.services``, ``kdmkb.protos``, ``kdmkb.kb_worker`` and ``kdmkb.coordinator``
(``pyproject.toml``'s package-dir mapping), so that no generic top-level name is installed.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kdmkb")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
