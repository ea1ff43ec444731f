"""Input statistics for weight optimizers that use calibration data (GPTQ, weighted HQQ).

A `CalibratedOptimizer` keeps, per module it is attached to, the sum of XᵀX over the inputs X
[tokens, K] the module saw while `collect(model)` was open; freeze() hands them to `optimize`.
`optimize_weights(model, batches)` is the one-call path: collect on the batches, then freeze.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from quanta.qcalib.batches import run_batches
from quanta.qmodules import QModuleMixin, WeightOptimizer, freeze, progress_bar


class InputStatistics:
    """The running sum of XᵀX [K, K] (float32) and the number of input rows it holds."""

    def __init__(self, in_size: int, device: torch.device) -> None:
        self.gram = torch.zeros(in_size, in_size, dtype=torch.float32, device=device)
        self.rows = 0

    def hessian(self) -> torch.Tensor:
        """XᵀX / rows: the Hessian (up to a factor 2) of the layer's squared output error."""
        return self.gram / max(self.rows, 1)


class CalibratedOptimizer(WeightOptimizer):
    """A weight optimizer that reads the inputs of its modules during calibration passes."""

    #: False: statistics are optional (used when present); True: freeze() refuses without them
    requires_statistics = True

    def _statistics(self) -> weakref.WeakKeyDictionary:
        # created lazily: subclasses may be frozen dataclasses
        table = self.__dict__.get("_table")
        if table is None:
            table = weakref.WeakKeyDictionary()
            object.__setattr__(self, "_table", table)
        return table

    def statistics(self, module: nn.Module) -> InputStatistics | None:
        """The statistics collected for `module`, or None."""
        return self._statistics().get(module)

    def release(self, module: nn.Module) -> None:
        """Free `module`'s statistics (done after its weight is stored)."""
        self._statistics().pop(module, None)

    def check_ready(self, module: nn.Module, name: str) -> None:
        if not self.requires_statistics and self.statistics(module) is None:
            return
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"optimizer {self.name!r} handles Linear modules only; module {name!r} is a "
                f"{type(module).__name__}: give it another optimizer with overrides"
            )
        if self.requires_statistics and self.statistics(module) is None:
            raise RuntimeError(
                f"module {name!r} uses the {self.name!r} weight optimizer but no calibration "
                "inputs were seen: run quanta.qcalib.optimize_weights(model, batches), or "
                "forward passes inside `with optimizer.collect(model):`, before freeze()"
            )

    @contextlib.contextmanager
    def collect(self, model: nn.Module) -> Iterator[None]:
        """Within the block, accumulate XᵀX of the inputs of the modules this optimizer serves."""
        handles = [
            module.register_forward_pre_hook(_Accumulator(self, module))
            for module in _served_modules(model, self)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_table", None)  # statistics are not settings: they are not pickled
        return state


# q/k/v (and gate/up) projections read the same tensor: its XᵀX is computed once.
# The cache holds the tensor itself, so that its memory cannot be reused by another input.
_last_gram: dict[str, Any] = {"tensor": None, "version": None, "gram": None}


class _Accumulator:
    def __init__(self, optimizer: CalibratedOptimizer, module: nn.Module) -> None:
        self.optimizer, self.module = optimizer, weakref.ref(module)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        inputs = args[0].detach()
        rows = inputs.reshape(-1, inputs.shape[-1])
        source = args[0]
        if _last_gram["tensor"] is source and _last_gram["version"] == source._version:
            gram = _last_gram["gram"]
        else:
            values = rows.float()
            gram = values.T @ values
            _last_gram.update(tensor=source, version=source._version, gram=gram)
        table = self.optimizer._statistics()
        statistics = table.get(module)
        if statistics is None:
            statistics = table[module] = InputStatistics(rows.shape[-1], rows.device)
        statistics.gram += gram
        statistics.rows += rows.shape[0]


def _served_modules(model: nn.Module, optimizer: WeightOptimizer) -> list[nn.Module]:
    return [
        module
        for module in model.modules()
        if isinstance(module, QModuleMixin)
        and isinstance(module, nn.Linear)  # inputs [..., K]: other modules get no statistics
        and module.qconfig.optimizer is optimizer
        and not module.is_frozen
    ]


def _calibrated_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin)
        and isinstance(module.qconfig.optimizer, CalibratedOptimizer)
        and not module.is_frozen
    ]


@torch.no_grad()
def optimize_weights(model: nn.Module, batches: Iterable[Any], progress: bool = True) -> nn.Module:
    """Run `batches` through `model` to collect the inputs of the modules whose weight optimizer
    uses calibration data (GPTQ, HQQ), then freeze those modules; returns `model`.

    A batch is a tensor (`model(batch)`), a tuple (`model(*batch)`) or a dict
    (`model(**batch)`). Other modules stay as they are: call `freeze(model)` for them.
    `progress` shows a bar for each phase (batches, modules) that takes over a second.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    served = _calibrated_modules(model)
    if not served:
        raise ValueError(
            "no module of the model has a calibrated weight optimizer (GPTQ, HQQ): pass "
            "optimizer=... to quantize() first"
        )
    optimizers = {id(module.qconfig.optimizer): module.qconfig.optimizer for _, module in served}
    for name, module in served:  # Linear only, checked before any forward pass
        if module.qconfig.optimizer.requires_statistics and not isinstance(module, nn.Linear):
            module.qconfig.optimizer.check_ready(module, name)
    with contextlib.ExitStack() as stack:
        for optimizer in optimizers.values():
            stack.enter_context(optimizer.collect(model))
        run_batches(model, batches, progress)
    _last_gram.update(tensor=None, version=None, gram=None)
    for name, module in served:  # every module is checked before any is changed
        module.qconfig.optimizer.check_ready(module, name)
    for _, module in progress_bar(served, desc="optimizing weights", progress=progress):
        optimizer = module.qconfig.optimizer
        freeze(module, progress=False)  # this loop's bar counts the modules
        optimizer.release(module)
    return model


def column_importance(statistics: InputStatistics | None, in_size: int) -> torch.Tensor | None:
    """diag(XᵀX)/rows [K]: how much an error in each input column costs, or None."""
    if statistics is None:
        return None
    importance = statistics.gram.diagonal() / max(statistics.rows, 1)
    return importance.clamp(min=importance.mean().item() * 1e-3 + math.ulp(0.0))
