"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class DinoError(Exception):
    """An error caused by the user's input (data, config, checkpoint), not a bug.

    ``same_on_all_ranks``: every process of a distributed run raises the same error, so only
    rank 0 needs to print it.
    """

    same_on_all_ranks = False
    exit_status = 2  # bad input; a failure of the machine, not of the input, says otherwise


class LoaderFailure(DinoError):
    """A data-loading worker process died (the out-of-memory killer, a crash): not bad input."""

    exit_status = 1


class ConfigError(DinoError):
    """A configuration value that does not validate; the message names the field."""


class DataError(DinoError):
    """Missing, empty or unreadable data."""


class CheckpointError(DinoError):
    """A checkpoint or weights file that cannot be used here."""


class StorageError(DinoError):
    """An output that cannot be written: a full disk, a quota, a read-only filesystem."""
