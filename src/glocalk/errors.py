"""The errors glocalk raises for problems a user can fix; the CLI turns each into one message.

Anything else (``KeyError``, ``AttributeError``, ...) is a bug and keeps its traceback.
"""

from __future__ import annotations


class GlocalkError(Exception):
    """Base of every error that names a problem with the user's input, options or files."""


class DataError(GlocalkError, ValueError):
    """A problem with rating data: missing files, malformed lines, bad values, unknown ids."""


class CheckpointError(GlocalkError, ValueError):
    """A model directory or training state is missing, corrupt, truncated or incompatible."""


class ConfigError(GlocalkError, ValueError):
    """An invalid hyperparameter or option (the message names it and its allowed range)."""


class TrainingError(GlocalkError, RuntimeError):
    """Training cannot go on (a non-finite loss, an unusable device, a mismatched resume)."""


class OutputError(GlocalkError, OSError):
    """An output path cannot be written (read-only, a directory, under a file) or is not ours to replace."""


def option_name(name: str) -> str:
    """An option as messages name it: the Python name and its command-line flag, ``n_dim (--n-dim)``."""
    return f"{name} (--{name.replace('_', '-')})"
