"""Scale math: how floats are mapped onto a qtype's code range."""

from __future__ import annotations

import torch

from quanta.qtypes.qtype import QType


def absmax_scale(x: torch.Tensor, qtype: QType, axis: int | None = 0) -> torch.Tensor:
    """Symmetric scale so that max|x| along every slice maps to the qtype's largest code.

    `axis` is the dimension kept (one scale per index along it, shaped to broadcast
    against `x`); None gives one scale for the whole tensor. An all-zero slice gets
    scale 1 so that it quantizes to exact zeros instead of dividing by zero.
    """
    if qtype.is_packed:
        raise ValueError(f"absmax_scale is for 8-bit qtypes; {qtype} uses minmax_affine_params")
    if axis is None:
        absmax = x.abs().amax()
    else:
        axis = axis % x.dim()
        dims = [d for d in range(x.dim()) if d != axis]
        absmax = x.abs().amax(dim=dims, keepdim=True) if dims else x.abs()
    return _safe_scale(absmax.float() / qtype.qmax, absmax, x.dtype)


def minmax_affine_params(
    x: torch.Tensor, qtype: QType, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group affine scale and integer zero point of a 2D tensor [rows, columns].

    Groups are `group_size` consecutive columns of a row. The range always contains 0, so
    zero weights stay exactly zero. Returns scale [rows, columns // group_size] in x's dtype
    and zero_point of the same shape in uint8: x ≈ (code - zero_point) * scale.
    """
    if not qtype.is_packed:
        raise ValueError(f"minmax_affine_params is for 2/4-bit qtypes, got {qtype}")
    if x.dim() != 2 or x.shape[1] % group_size != 0:
        raise ValueError(
            f"expected a 2D tensor whose columns divide into groups of {group_size}, "
            f"got shape {tuple(x.shape)}"
        )
    groups = x.float().reshape(x.shape[0], -1, group_size)
    low = groups.amin(dim=-1).clamp(max=0)
    high = groups.amax(dim=-1).clamp(min=0)
    scale = _safe_scale((high - low) / qtype.qmax, high - low, x.dtype).float()
    zero_point = torch.round(-low / scale).clamp(qtype.qmin, qtype.qmax).to(torch.uint8)
    return scale.to(x.dtype), zero_point


def _safe_scale(scale: torch.Tensor, extent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scale in `dtype`: 1 where the range is empty, never below the dtype's tiniest normal."""
    scale = scale.clamp(min=torch.finfo(dtype).tiny).to(dtype)
    return torch.where(extent > 0, scale, torch.ones_like(scale))
