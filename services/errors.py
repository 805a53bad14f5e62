"""Domain errors shared by every package, so each layer can map them to a status or exit code."""


class KdmkbError(Exception):
    """Base of every error kdmkb raises on purpose; its message is meant for the user."""


class DataError(KdmkbError, ValueError):
    """A data file (triples, vocabulary, alignment) is malformed or inconsistent."""


class ConfigError(KdmkbError, ValueError):
    """A setting is invalid; the message names the field."""


class NotFoundError(KdmkbError, LookupError):
    """A named KB, job, entity or relation does not exist."""


class PreconditionError(KdmkbError, RuntimeError):
    """The request is valid but the system is not in a state to serve it."""


class UnavailableError(KdmkbError, RuntimeError):
    """A KB's worker process is gone (killed, out of memory); a retry after its restart may succeed."""


class LimitError(KdmkbError, RuntimeError):
    """The server is at one of its capacity limits (services/limits.py); the message names it."""


class JobFailedError(KdmkbError):
    """A job ended without succeeding (FAILED or STOPPED); the message names the job and its error."""
