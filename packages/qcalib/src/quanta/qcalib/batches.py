"""Calibration batches through a model: the one loop that smoothing and weight optimizers share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from tqdm.auto import tqdm


def run_batches(model: nn.Module, batches: Iterable[Any], progress: bool = False) -> int:
    """Run every batch through `model`; returns how many ran.

    A batch is a tensor (`model(batch)`), a tuple or list (`model(*batch)`) or a dict
    (`model(**batch)`). `progress` shows a tqdm bar.
    """
    count = 0
    for batch in tqdm(batches, desc="calibration batches", leave=False, disable=not progress):
        if isinstance(batch, dict):
            model(**batch)
        elif isinstance(batch, (tuple, list)):
            model(*batch)
        else:
            model(batch)
        count += 1
    return count
