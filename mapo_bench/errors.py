"""One error type for bad input: the CLI prints its one-line message and exits with code 2."""


class MapoBenchError(Exception):
    """A user-facing error: bad input, a missing model, a failed check.

    The message is one line that names the file, key or row and says how to fix it. The CLI prints
    it without a stack trace and exits with ``exit_code``.
    """

    exit_code = 2


class ModelNotFoundError(MapoBenchError):
    """A model id that is neither a local path, under $MAPO_BENCH_MODEL_ROOT, nor reachable on the hub."""


class NotYetImplementedError(MapoBenchError, NotImplementedError):
    """A capability that is planned but not built yet; the CLI exits non-zero with the reason."""

    exit_code = 3


class UnknownNameError(MapoBenchError, ValueError):
    """A name missing from a registry. Also a ValueError, so inside a pydantic validator it becomes a
    validation error that names the config key; outside one, the CLI prints it as one line."""
