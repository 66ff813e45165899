"""User-facing failures.

Every error a user can cause (a bad file, missing weights, a wrong option) is a ``PDDError`` whose
message is one line naming the file, when there is one, and the problem. The CLI prints it and
exits non-zero; anything else reaching the CLI is a bug and keeps its traceback under ``--debug``.
"""

from __future__ import annotations


class PDDError(Exception):
    """Base class of errors reported to the user as one line."""


class DataError(PDDError):
    """An input image, mask, label file or dataset layout is unusable."""


class WeightsError(PDDError):
    """Teacher weights are missing, corrupt, or do not match the architecture."""


class CheckpointError(PDDError):
    """A checkpoint cannot be read or does not belong to this code/preset."""


class ConfigError(PDDError):
    """A preset, configuration file or option value is invalid."""
