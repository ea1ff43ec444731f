"""Shared helpers for the qmodules tests, as fixtures (tests run with --import-mode=importlib)."""

from collections.abc import Callable

import pytest
import torch


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).norm() / expected.norm())


def _uniform_inputs(
    *shape: int, dtype: torch.dtype = torch.float32, seed: int = 1234
) -> torch.Tensor:
    # not seed 0: the modules are initialised from seed 0, and inputs drawn from the same
    # stream correlate with the weights (outputs grow, relative errors look smaller)
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=generator) * 2 - 1).to(dtype)


@pytest.fixture
def relative_error() -> Callable[[torch.Tensor, torch.Tensor], float]:
    """‖actual − expected‖ / ‖expected‖ in float32."""
    return _relative_error


@pytest.fixture
def uniform_inputs() -> Callable[..., torch.Tensor]:
    """Reproducible U(-1, 1) inputs of a shape and dtype."""
    return _uniform_inputs
