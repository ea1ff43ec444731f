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


def _with_non_finite(x: torch.Tensor, nan: bool = True, inf: bool = True) -> torch.Tensor:
    # a copy of x [rows >= 5, K >= 6] with a NaN in row 1, +Inf in row 3 and -Inf in row 4
    x = x.clone()
    if nan:
        x[1, 2] = float("nan")
    if inf:
        x[3, 0], x[4, 5] = float("inf"), -float("inf")
    return x


@pytest.fixture
def with_non_finite() -> Callable[..., torch.Tensor]:
    """A copy of x [rows, K] with a NaN in row 1 (nan=True) and ±Inf in rows 3, 4 (inf=True)."""
    return _with_non_finite


@pytest.fixture
def relative_error() -> Callable[[torch.Tensor, torch.Tensor], float]:
    """‖actual − expected‖ / ‖expected‖ in float32."""
    return _relative_error


@pytest.fixture
def uniform_inputs() -> Callable[..., torch.Tensor]:
    """Reproducible U(-1, 1) inputs of a shape and dtype."""
    return _uniform_inputs
