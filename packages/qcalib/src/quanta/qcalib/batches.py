"""Calibration batches through a model: the one loop that smoothing and weight optimizers share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from quanta.qmodules import progress_bar


def run_batches(model: nn.Module, batches: Iterable[Any], progress: bool = False) -> int:
    """Run every batch through `model`; returns how many ran.

    A batch is a tensor (`model(batch)`), a tuple or list (`model(*batch)`) or a dict
    (`model(**batch)`). `progress` shows a bar when the batches take over a second.
    """
    count = 0
    for batch in progress_bar(batches, desc="calibration batches", progress=progress):
        if isinstance(batch, dict):
            model(**batch)
        elif isinstance(batch, (tuple, list)):
            model(*batch)
        else:
            model(batch)
        count += 1
    return count
