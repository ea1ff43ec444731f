"""The errors qio raises on a checkpoint it refuses: all ValueError subclasses."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, key or problem."""


class CorruptCheckpointError(CheckpointError):
    """A file that is truncated, malformed or whose bytes were changed after it was written."""


class ChecksumMismatchError(CorruptCheckpointError):
    """A tensor whose bytes do not match the checksum written beside it."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint that does not fit the model: missing or unexpected keys, shapes, dtypes."""


class UnsupportedCheckpointError(CheckpointError):
    """A checkpoint of an unknown format, config version or layout version."""
