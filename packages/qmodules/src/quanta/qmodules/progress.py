"""progress_bar(): the one kind of tqdm bar quanta shows for its long phases."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

# A phase shorter than this shows no bar (tqdm's `delay`): loading 5 KB prints nothing.
DELAY_S = 1.0


def progress_bar(
    iterable: Iterable[Any] | None = None, *, desc: str, progress: bool = True, **options: Any
) -> tqdm:
    """A tqdm bar over one phase (`desc`): shown only once the phase has run `DELAY_S`
    seconds, cleared when it ends, never shown when `progress` is False.

    `options` go to tqdm (`total`, `unit`, `unit_scale`, ...).
    """
    if not isinstance(progress, bool):  # checked here for every phase that takes `progress`
        raise TypeError(f"progress must be True or False, got {progress!r}")
    return tqdm(iterable, desc=desc, delay=DELAY_S, leave=False, disable=not progress, **options)
