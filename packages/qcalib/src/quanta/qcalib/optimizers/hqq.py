"""HQQ: half-quadratic refinement of the scale and float zero point of 2/4-bit weight groups.

Data free. Starting from each group's min/max, it alternates (Badri & Shaji, "Half-Quadratic
Quantization of Large Machine Learning Models", 2023): round the weights to codes; split off the
sparse part of the rounding error with an l_p shrinkage (p < 1, so a few outliers are allowed to
stay wrong); then fit the zero point (and, here, also the scale) by least squares to what is
left. Each group keeps the parameters with the least squared error it met, so HQQ never does
worse than min-max on that measure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from quanta.qcalib.optimizers.statistics import CalibratedOptimizer, column_importance
from quanta.qmodules import WeightParts
from quanta.qtypes import PACKED_AFFINE, QType, least_error_candidate


@dataclass(frozen=True, repr=True, eq=False)
class HQQ(CalibratedOptimizer):
    """Half-quadratic optimization of per-group scale and float zero point (2/4-bit weights).

    Data free by default. Where calibration inputs were collected for a module
    (`quanta.qcalib.optimize_weights`), each column's error is weighted by the mean square of
    its input (diag XᵀX / n), so that the columns fed by large activations are kept closest.

    lp_norm: the p of the sparsity-promoting error norm; beta, kappa: the half-quadratic penalty
    and its growth per iteration; iterations: the most rounds; refine_scale: also fit the scale
    (the original HQQ fits only the zero point).
    """

    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iterations: int = 20
    refine_scale: bool = True

    name = "hqq"
    layouts = (PACKED_AFFINE,)
    float_zero_point = True
    requires_statistics = False

    def __post_init__(self) -> None:
        if not 0 < self.lp_norm <= 1:
            raise ValueError(f"lp_norm must be in (0, 1], got {self.lp_norm}")
        if self.beta <= 0 or self.kappa < 1:
            raise ValueError(f"need beta > 0 and kappa >= 1, got {self.beta}, {self.kappa}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")

    def optimize(
        self,
        weight: torch.Tensor,
        qtype: QType,
        group_size: int | None,
        module: nn.Module | None = None,
    ) -> WeightParts:
        """Codes, scale and float zero point (both in the weight's dtype) of weight [rows, K]."""
        rows, in_size = weight.shape
        groups = weight.float().reshape(rows, -1, group_size)
        statistics = None if module is None else self.statistics(module)
        importance = column_importance(statistics, in_size)
        if importance is not None:
            importance = importance.reshape(1, -1, group_size)
        scale, zero_point = hqq_params(
            groups, qtype.qmax, self.lp_norm, self.beta, self.kappa, self.iterations,
            self.refine_scale, importance,
        )  # fmt: skip
        scale, zero_point = scale.to(weight.dtype), zero_point.to(weight.dtype)
        codes = torch.ops.quanta.quantize_affine(weight, scale, zero_point, qtype.bits, group_size)
        return WeightParts(codes, scale, zero_point)


def _shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The proximal operator of the l_p norm (generalized soft thresholding)."""
    return torch.sign(x) * torch.relu(x.abs() - x.abs().clamp(min=1e-12).pow(p - 1) / beta)


def _error(groups, scale, zero, qmax, importance):
    codes = torch.round(groups / scale + zero).clamp(0, qmax)
    return codes, (((codes - zero) * scale - groups).square() * importance).sum(-1, keepdim=True)


def _mean(x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    return (x * importance).sum(-1, keepdim=True) / importance.sum(-1, keepdim=True)


@torch.no_grad()
def hqq_params(
    groups: torch.Tensor,
    qmax: int,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    iterations: int = 20,
    refine_scale: bool = True,
    importance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 scale and zero point [rows, n_groups] for float32 groups [rows, n_groups, size].

    `importance` (broadcasting against `groups`) weights each element's squared error.
    """
    if importance is None:
        importance = torch.ones_like(groups[:1])
    rounds = _rounds(groups, qmax, lp_norm, beta, kappa, iterations, refine_scale, importance)
    # as in HQQ: stop once an iteration improves nothing
    best_scale, best_zero = least_error_candidate(rounds, stop_without_gain=True)
    return best_scale.squeeze(-1), best_zero.squeeze(-1)


def _rounds(
    groups: torch.Tensor,
    qmax: int,
    lp_norm: float,
    beta: float,
    kappa: float,
    iterations: int,
    refine_scale: bool,
    importance: torch.Tensor,
) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The min-max (scale, zero), then each half-quadratic round's, with its error per group."""
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    extent = high - low
    scale = torch.where(extent > 0, extent / qmax, torch.ones_like(extent))
    zero = -low / scale
    codes, error = _error(groups, scale, zero, qmax, importance)
    yield (scale, zero), error
    for _ in range(iterations):
        sparse_error = _shrink(groups - (codes - zero) * scale, beta, lp_norm)
        target = groups - sparse_error  # what the codes should represent
        if refine_scale:
            # least squares of target ≈ a * codes + b over each group: scale a, zero -b / a
            codes_mean, target_mean = _mean(codes, importance), _mean(target, importance)
            centered = codes - codes_mean
            variance = _mean(centered.square(), importance)
            covariance = _mean(centered * (target - target_mean), importance)
            slope = covariance / variance.clamp(min=1e-12)
            usable = (variance > 0) & (slope > 0)
            scale = torch.where(usable, slope, scale)
            zero = torch.where(usable, (codes_mean - target_mean / scale), zero)
        else:
            zero = _mean(codes - target / scale, importance)
        beta *= kappa
        codes, error = _error(groups, scale, zero, qmax, importance)
        yield (scale, zero), error
