"""GPTQ: round 2/4-bit weights column by column, correcting the columns not yet rounded.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (2022). With H = XᵀX of the layer's calibration inputs, the rounding error of
each column is spread over the remaining columns through the Cholesky factor of H⁻¹, so the
layer's output error ‖XWᵀ − XŴᵀ‖ is minimised rather than the weight error.

Storage stays the canonical one (contiguous groups, uint8 zero point). Without act-order the
scale and zero point of a group come from the already-corrected weights when GPTQ reaches the
group's first column; with act-order (columns in decreasing diag(H)) they are fixed up front
from the float weights ("static groups"), so that a column keeps its own group's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quanta.qcalib.optimizers.statistics import CalibratedOptimizer
from quanta.qmodules import WeightParts
from quanta.qtypes import PACKED_AFFINE, QType, least_error_candidate, minmax_affine_params


@dataclass(frozen=True, repr=True, eq=False)
class GPTQ(CalibratedOptimizer):
    """Hessian-aware rounding of 2/4-bit weights from calibration inputs.

    act_order: quantize columns in decreasing order of diag(H); damping: added to diag(H) as a
    fraction of its mean (keeps H⁻¹ well conditioned); block_size: columns per lazy update;
    clip_search: shrink each group's min-max range by the factor (1 down to 0.75) that gives the
    least squared error weighted by diag(H), before rounding.
    """

    act_order: bool = True
    damping: float = 0.01
    block_size: int = 128
    clip_search: bool = True

    name = "gptq"
    layouts = (PACKED_AFFINE,)

    def __post_init__(self) -> None:
        if not self.damping > 0:
            raise ValueError(f"damping must be > 0, got {self.damping}")
        if self.block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {self.block_size}")

    def optimize(
        self,
        weight: torch.Tensor,
        qtype: QType,
        group_size: int | None,
        module: nn.Module | None = None,
    ) -> WeightParts:
        statistics = None if module is None else self.statistics(module)
        if statistics is None:
            raise RuntimeError("GPTQ needs the module's calibration inputs (see check_ready)")
        return gptq_quantize(
            weight, statistics.hessian(), qtype, group_size, self.act_order, self.damping,
            self.block_size, self.clip_search,
        )  # fmt: skip


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    qtype: QType,
    group_size: int,
    act_order: bool = True,
    damping: float = 0.01,
    block_size: int = 128,
    clip_search: bool = True,
) -> WeightParts:
    """GPTQ codes, scale and uint8 zero point of weight [rows, K] given H = XᵀX/n [K, K]."""
    rows, in_size = weight.shape
    work = weight.float().clone()
    hessian = hessian.float().clone()
    dead = hessian.diagonal() == 0  # inputs that were always zero: their weights do not matter
    hessian[dead, dead] = 1
    work[:, dead] = 0
    groups = in_size // group_size
    importance = hessian.diagonal().clone()
    scale = torch.empty(rows, groups, dtype=torch.float32, device=weight.device)
    zero_point = torch.empty(rows, groups, dtype=torch.uint8, device=weight.device)
    if act_order:
        scale, zero_point = _group_params(work, importance, qtype, group_size, clip_search)
        scale = scale.to(weight.dtype).float()  # round with the scale that will be stored
        order = torch.argsort(hessian.diagonal(), descending=True)
        work, hessian = work[:, order], hessian[order][:, order]
    else:
        order = torch.arange(in_size, device=weight.device)
    hessian.diagonal().add_(damping * hessian.diagonal().mean())
    inverse = torch.linalg.cholesky(hessian)
    inverse = torch.cholesky_inverse(inverse)
    inverse = torch.linalg.cholesky(inverse, upper=True)

    codes = torch.empty(rows, in_size, dtype=torch.uint8, device=weight.device)
    for start in range(0, in_size, block_size):
        end = min(start + block_size, in_size)
        block = work[:, start:end].clone()
        errors = torch.empty_like(block)
        block_inverse = inverse[start:end, start:end]
        for i in range(end - start):
            column = int(order[start + i])
            group = column // group_size
            if not act_order and column % group_size == 0:
                pending = torch.cat([block[:, i:], work[:, end:]], dim=1)[:, :group_size]
                group_scale, group_zero = _group_params(
                    pending, importance[column : column + group_size], qtype, group_size,
                    clip_search,
                )  # fmt: skip
                scale[:, group] = group_scale[:, 0].to(weight.dtype).float()
                zero_point[:, group] = group_zero[:, 0]
            group_scale, group_zero = scale[:, group], zero_point[:, group].float()
            values = block[:, i]
            quantized = torch.round(values / group_scale + group_zero).clamp(0, qtype.qmax)
            codes[:, start + i] = quantized.to(torch.uint8)
            error = (values - (quantized - group_zero) * group_scale) / block_inverse[i, i]
            block[:, i:] -= error[:, None] * block_inverse[i, i:][None, :]
            errors[:, i] = error
        work[:, end:] -= errors @ inverse[start:end, end:]
    if act_order:
        codes = codes[:, torch.argsort(order)]
    return WeightParts(codes, scale.to(weight.dtype), zero_point)


CLIP_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def _group_params(
    values: torch.Tensor, importance: torch.Tensor, qtype: QType, group_size: int, search: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and uint8 zero point per group, the range shrunk by the best clip factor."""
    scale, zero_point = minmax_affine_params(values, qtype, group_size)
    if not search:
        return scale, zero_point
    rows = values.shape[0]
    grouped = values.float().reshape(rows, -1, group_size)
    weights = importance.float().reshape(1, -1, group_size)
    zero = zero_point.float().unsqueeze(-1)

    def with_error(factor: float) -> tuple[torch.Tensor, torch.Tensor]:
        candidate = (scale.float() * factor).to(scale.dtype)
        step = candidate.float().unsqueeze(-1)
        codes = torch.round(grouped / step + zero).clamp(0, qtype.qmax)
        return candidate, (((codes - zero) * step - grouped).square() * weights).sum(-1)

    return least_error_candidate(map(with_error, CLIP_FACTORS)), zero_point
