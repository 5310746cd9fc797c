"""The library's errors about its input: one base class, one subclass per kind of input.

Raised where a config, a data set or a checkpoint cannot be used as given; the message names the
file, image, annotation or dotted key and what is wrong, so the CLI prints it in one line (exit 2)
and catches only :class:`InputError`. Anything else is a bug and keeps its traceback. The
subclasses are also importable from where they are raised (``training.config``,
``data.validation``, ``checkpoint.safe_load``).
"""
from __future__ import annotations

__all__ = ["InputError", "ConfigError", "DataError", "CheckpointError"]


class InputError(ValueError):
    """Input the library cannot use as given; the message says what to fix."""


class ConfigError(InputError):
    """Invalid configuration or command-line argument; the message names every offending dotted key."""


class DataError(InputError):
    """A dataset the library cannot use as given; the message names the file, image id, annotation
    id or key and what is wrong."""


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not match the model; the message names the file."""
