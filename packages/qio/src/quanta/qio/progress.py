"""An optional progress bar: tqdm's when it is installed (the `progress` extra), else none."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _NoBar:
    def update(self, count: int) -> None:
        """Nothing to show."""

    def set_description(self, description: str) -> None:
        """Nothing to show."""


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Any]:
    """A bar over `total` bytes with `update(count)` and `set_description(text)`; a silent one
    when disabled or without tqdm."""
    if not enabled:
        yield _NoBar()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        yield _NoBar()
        return
    with tqdm(total=total, desc=description, unit="B", unit_scale=True, leave=False) as bar:
        yield bar
