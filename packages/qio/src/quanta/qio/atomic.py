"""Atomic file writes: a temporary file in the target's folder, renamed over it at the end."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; it replaces `path` only once the block
    ends without an error.

    The data is synced to disk before the rename, so a crash leaves either the old file or the
    new one at `path`, never a partial one (at most a stray temporary file beside it).
    safetensors' save_file renames a temporary file of its own too, but syncs nothing and leaves
    it private (0600): hence this wrapper around it.
    """
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # a saved model is an ordinary file
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
