"""Scale math: how floats are mapped onto a qtype's code range."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import torch

from quanta.qtypes.qtype import PACKED_AFFINE, SYMMETRIC, QType


def absmax_scale(x: torch.Tensor, qtype: QType, axis: int | None = 0) -> torch.Tensor:
    """Symmetric scale so that max|x| along every slice maps to the qtype's largest code.

    `axis` is the dimension kept (one scale per index along it, shaped to broadcast
    against `x`); None gives one scale for the whole tensor. An all-zero slice gets
    scale 1 so that it quantizes to exact zeros instead of dividing by zero. The scale is at
    most the largest one with which every code dequantizes to a finite value of x's dtype
    (which only weights within 1% of finfo.max reach: their largest codes may then clip by up
    to one step instead of half a step).
    """
    if qtype.layout != SYMMETRIC:
        raise ValueError(f"absmax_scale is for 8-bit qtypes; {qtype} uses minmax_affine_params")
    dims = _reduced_dims(x, axis)
    absmax = x.abs().amax(dim=dims, keepdim=True) if dims else x.abs()
    scale = _safe_scale(absmax.to(_wide(x)) / qtype.qmax, absmax, x.dtype)
    return scale.clamp(max=_largest_finite_scale(x.dtype, max(-qtype.qmin, qtype.qmax)))


# Float8 keeps a fixed relative precision, so scales between absmax/qmax and twice that all fit
# the values without clipping, each placing the code grid differently against them.
FLOAT8_SCALE_CANDIDATES = 16


def symmetric_scale(x: torch.Tensor, qtype: QType, axis: int | None = 0) -> torch.Tensor:
    """The per-axis scale 8-bit weights are quantized with.

    int8: the absmax scale. float8: the absmax scale times the one of 2**(k/16), k < 16, that
    gives each slice the least squared rounding error (on SmolLM2 this halves the perplexity
    cost of e4m3 weights against plain absmax: +1.5% instead of +2.1%).
    """
    scale = absmax_scale(x, qtype, axis)
    if not qtype.is_floating_point:
        return scale
    dims = _reduced_dims(x, axis)
    wide = _wide(x)
    # Errors in units of a power of two near each scale: exact, so they rank the candidates as
    # in the weight's units, and their squares stay finite for weights near finfo.max.
    unit = torch.ldexp(torch.ones_like(scale, dtype=wide), torch.frexp(scale.to(wide)).exponent)
    values = x.to(wide) / unit

    def with_error(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        candidate = (scale.to(wide) * 2 ** (step / FLOAT8_SCALE_CANDIDATES)).to(x.dtype)
        ratio = candidate.to(wide) / unit
        codes = (values / ratio).clamp(qtype.qmin, qtype.qmax).to(qtype.dtype).to(wide)
        error = (codes * ratio - values).square()
        # a candidate whose largest code dequantizes past finfo(x.dtype).max is never chosen
        overflows = (codes * candidate.to(wide)).to(x.dtype).isinf()
        error = torch.where(overflows, torch.inf, error)
        return candidate, error.sum(dim=dims, keepdim=True) if dims else error

    return least_error_candidate(map(with_error, range(FLOAT8_SCALE_CANDIDATES)))


Candidate = TypeVar("Candidate", torch.Tensor, tuple[torch.Tensor, ...])


def least_error_candidate(
    candidates: Iterable[tuple[Candidate, torch.Tensor]], stop_without_gain: bool = False
) -> Candidate:
    """Per slice, the candidate with the least error: the search behind scale and clip choices.

    `candidates` yields (candidate, error) pairs: a candidate is a tensor or a tuple of tensors
    chosen together (a scale and its zero point), its error holds one value per slice and
    broadcasts against them. On ties the earlier candidate is kept. With `stop_without_gain`
    the search ends at the first candidate that is better on no slice (read on the host).
    """
    pairs = iter(candidates)
    first = next(pairs, None)
    if first is None:
        raise ValueError("least_error_candidate needs at least one candidate")
    best, best_error = first
    for candidate, error in pairs:
        better = error < best_error
        if stop_without_gain and not bool(better.any()):
            break
        best = _where(better, candidate, best)
        best_error = torch.where(better, error, best_error)
    return best


def _where(better: torch.Tensor, candidate: Candidate, best: Candidate) -> Candidate:
    """`candidate` where `better`, else `best`, tensor by tensor."""
    if isinstance(candidate, torch.Tensor):
        return torch.where(better, candidate, best)
    return tuple(torch.where(better, new, old) for new, old in zip(candidate, best, strict=True))


def minmax_affine_params(
    x: torch.Tensor, qtype: QType, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group affine scale and integer zero point of a 2D tensor [rows, columns].

    Groups are `group_size` consecutive columns of a row. The range always contains 0, so
    zero weights stay exactly zero. Returns scale [rows, columns // group_size] in x's dtype
    and zero_point of the same shape in uint8: x ≈ (code - zero_point) * scale.
    """
    if qtype.layout != PACKED_AFFINE:
        raise ValueError(f"minmax_affine_params is for 2/4-bit qtypes, got {qtype}")
    if x.dim() != 2 or x.shape[1] % group_size != 0:
        raise ValueError(
            f"expected a 2D tensor whose columns divide into groups of {group_size}, "
            f"got shape {tuple(x.shape)}"
        )
    groups = x.to(_wide(x)).reshape(x.shape[0], -1, group_size)
    low = groups.amin(dim=-1).clamp(max=0)
    high = groups.amax(dim=-1).clamp(min=0)
    extent = high - low
    # for weights near ±finfo.max the extent overflows: halving both ends first keeps it finite
    step = torch.where(extent.isinf(), (high / 2 - low / 2) / (qtype.qmax / 2), extent / qtype.qmax)
    scale = _safe_scale(step, extent, x.dtype).to(_wide(x))
    zero_point = torch.round(-low / scale).clamp(qtype.qmin, qtype.qmax).to(torch.uint8)
    return scale.to(x.dtype), zero_point


def _reduced_dims(x: torch.Tensor, axis: int | None) -> list[int]:
    """The dimensions a per-`axis` statistic reduces over (all of them for axis=None)."""
    if axis is None:
        return list(range(x.dim()))
    axis = axis % x.dim()
    return [d for d in range(x.dim()) if d != axis]


def _largest_finite_scale(dtype: torch.dtype, largest_code: float) -> float:
    """The largest scale of `dtype` whose product with `largest_code`, computed as the
    dequantizers do (in float32, or float64, then cast), is finite in `dtype`."""
    wide = torch.promote_types(dtype, torch.float32)
    scale = torch.tensor(torch.finfo(dtype).max / largest_code, dtype=wide).to(dtype)
    if (scale.to(wide) * largest_code).to(dtype).isinf():
        scale = torch.nextafter(scale, torch.zeros_like(scale))
    return scale.item()


def _wide(x: torch.Tensor) -> torch.dtype:
    """The dtype scale math on x runs in: float32, or float64 for float64 x."""
    return torch.promote_types(x.dtype, torch.float32)


def _safe_scale(scale: torch.Tensor, extent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scale in `dtype`: 1 where the range is empty, never below the dtype's tiniest normal."""
    scale = scale.clamp(min=torch.finfo(dtype).tiny).to(dtype)
    return torch.where(extent > 0, scale, torch.ones_like(scale))
