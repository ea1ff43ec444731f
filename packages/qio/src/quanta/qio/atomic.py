"""Files made visible whole: written in a private staging folder, synced, renamed into place."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The staging folder of one save; safetensors' own temporary file lands in it too.
STAGING_NAME = re.compile(r"\.quanta-save-[0-9a-f]{8}")


@contextmanager
def staging_folder(directory: Path, save_id: str) -> Iterator[Path]:
    """A new folder `.quanta-save-<save_id>` in `directory` to write files in, removed at the
    end; one a killed process leaves behind is removed by the next save (see quanta.qio.save)."""
    staging = directory / f".quanta-save-{save_id}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staged: Path, target: Path) -> None:
    """Sync `staged` to disk and rename it to `target` (replacing it): a crash leaves the old
    file or the new one at `target`, never a partial one."""
    with open(staged, "rb") as file:
        os.fsync(file.fileno())
    os.chmod(staged, 0o644)  # a saved model is an ordinary file, not a private temporary one
    os.replace(staged, target)


def sync_folder(directory: Path) -> None:
    """Sync the folder's entries (the renames and removals in it) to disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
