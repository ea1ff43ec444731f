"""Pure-PyTorch reference implementations of the ``torch.ops.quanta.*`` ops.

One function per op, with the op's name and schema (docs/ops.md). They are registered for the
``CompositeExplicitAutograd`` key, so they run on every device (CPU, CUDA, MPS, XPU, ...); a native
kernel registered for a device's own key (e.g. the C++ CPU ``unpack``) takes precedence there.
Every function checks its arguments first and raises TypeError/ValueError naming the argument.
Dequantization is computed in fp32 and cast to the requested dtype at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from quanta.qkernels import _validate as v

__all__ = [
    "dequantize_affine",
    "dequantize_grouped",
    "dequantize_lut4",
    "dequantize_symmetric",
    "linear_affine",
    "linear_float8",
    "linear_grouped",
    "linear_int8",
    "linear_lut4",
    "linear_symmetric",
    "pack",
    "quantize_affine",
    "quantize_dynamic",
    "quantize_lut4",
    "quantize_symmetric",
    "unpack",
]


def quantize_symmetric(
    input: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """codes = input / scale, rounded and clamped to int8 (NaN, which int8 cannot hold, to 0),
    or clamped to ±finfo.max for float8 (NaN stays NaN)."""
    v.check_quantize_symmetric(input, scale, dtype)
    scaled = input.float() / scale.float()
    if dtype == torch.int8:
        return scaled.round().clamp(-128, 127).nan_to_num(0.0).to(torch.int8)
    limit = torch.finfo(dtype).max
    return scaled.clamp(-limit, limit).to(dtype)


def quantize_dynamic(input: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale) with one scale per row of the last dimension, in input's dtype.

    scale = max|row| / qmax in fp32 (qmax: 127 for int8, finfo(dtype).max for float8), 1 where
    that is 0, at least finfo(input.dtype).tiny; codes = quantize_symmetric(input, scale). A row
    holding a NaN gets a NaN scale and one holding ±Inf an infinite one: either way the row
    dequantizes to NaN (NaN * code, or 0 * Inf), as the float model computes x / s * s with that
    s, and int8 has no NaN code to keep a NaN in.
    """
    v.check_quantize_dynamic(input, dtype)
    qmax = 127.0 if dtype == torch.int8 else torch.finfo(dtype).max
    if input.shape[-1] == 0:
        absmax = input.new_zeros(*input.shape[:-1], 1, dtype=torch.float32)
    else:
        absmax = input.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(absmax == 0, 1.0, absmax / qmax).clamp(min=torch.finfo(input.dtype).tiny)
    scale = scale.to(input.dtype)
    return quantize_symmetric(input, scale, dtype), scale


def dequantize_symmetric(
    codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """codes * scale, computed in fp32, returned in dtype."""
    v.check_dequantize_symmetric(codes, scale, dtype)
    return (codes.float() * scale.float()).to(dtype)


def quantize_affine(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """uint8 codes = clamp(round(input / scale + zero_point), 0, 2**bits - 1), per group of K.

    A code whose value (code - zero_point) * scale would overflow input's dtype is moved one step
    toward the zero point: near the dtype's limit the rounded zero point can shift a min-max
    grid's end code half a step past it, and that value would dequantize to ±Inf.
    """
    v.check_quantize_affine(input, scale, zero_point, bits, group_size)
    rows, k = input.shape
    grouped = input.float().reshape(rows, k // group_size, group_size)
    scale, zero_point = scale.float().unsqueeze(-1), zero_point.float().unsqueeze(-1)
    codes = (grouped / scale + zero_point).round().clamp(0, 2**bits - 1)
    # the value as dequantize_affine computes it
    overflows = ((codes - zero_point) * scale).to(input.dtype).isinf()
    codes = torch.where(overflows, codes - (codes - zero_point).sign(), codes)
    return codes.clamp(0, 2**bits - 1).to(torch.uint8).reshape(rows, k)


def dequantize_affine(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(codes - zero_point) * scale per group of K, in fp32, returned in dtype."""
    v.check_dequantize_affine(codes, scale, zero_point, group_size, dtype)
    rows, k = codes.shape
    grouped = codes.float().reshape(rows, k // group_size, group_size)
    values = (grouped - zero_point.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)
    return values.reshape(rows, k).to(dtype)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., K] into uint8 [..., ceil(K * bits / 8)], low bits first.

    Code j goes to byte j // (8 // bits) at bit (j % (8 // bits)) * bits. Codes must be below
    2**bits; higher bits are dropped (values are not checked, which would synchronize a device).
    """
    v.check_pack(codes, bits)
    per_byte = 8 // bits
    k = codes.shape[-1]
    width = v.packed_width(k, bits)
    masked = codes & (2**bits - 1)
    if width * per_byte != k:
        masked = F.pad(masked, (0, width * per_byte - k))
    slots = masked.reshape(*codes.shape[:-1], width, per_byte)
    packed = slots[..., 0].clone()
    for slot in range(1, per_byte):
        packed |= slots[..., slot] << (slot * bits)
    return packed


def unpack(packed: torch.Tensor, bits: int, size: int) -> torch.Tensor:
    """The inverse of pack: uint8 [..., ceil(size * bits / 8)] into uint8 codes [..., size]."""
    v.check_unpack(packed, bits, size)
    mask, per_byte = 2**bits - 1, 8 // bits
    slots = [(packed >> (slot * bits)) & mask for slot in range(per_byte)]
    codes = torch.stack(slots, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per_byte)
    return codes[..., :size].contiguous()


def linear_symmetric(
    input: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """input [..., K] @ (codes * scale)ᵀ + bias, in input's dtype; codes [N, K], scale [N, 1]."""
    v.check_linear_symmetric(input, codes, scale, bias)
    weight = torch.ops.quanta.dequantize_symmetric(codes, scale, input.dtype)
    return F.linear(input, weight, None if bias is None else bias.to(input.dtype))


def linear_affine(
    input: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """input [..., K] @ dequantize_affine(unpack(packed))ᵀ + bias, in input's dtype."""
    v.check_linear_affine(input, packed, scale, zero_point, bits, group_size, bias)
    k = input.shape[-1]
    codes = torch.ops.quanta.unpack(packed, bits, k)
    weight = torch.ops.quanta.dequantize_affine(codes, scale, zero_point, group_size, input.dtype)
    return F.linear(input, weight, None if bias is None else bias.to(input.dtype))


# Terms of an int8 dot product that sum exactly in fp32: 1024 * 128 * 128 = 2**24.
_EXACT_INT8_TERMS = 1024


def linear_int8(
    input: torch.Tensor,
    input_scale: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """int8 activations times int8 weights (W8A8): (input @ codesᵀ) * input_scale * scaleᵀ + bias.

    input int8 [..., K] with input_scale of one element (per tensor) or [..., 1] (per row);
    codes int8 [N, K] with scale [N, 1]. The products are summed exactly (int32); the scales and
    bias are applied in fp32, in that order, and the result is returned in dtype.
    """
    v.check_linear_int8(input, input_scale, codes, scale, bias, dtype)
    n, k = codes.shape
    rows = input.reshape(math.prod(input.shape[:-1]), k)
    acc = torch.zeros(rows.shape[0], n, dtype=torch.int32, device=input.device)
    # fp32 matmuls of at most _EXACT_INT8_TERMS terms are exact on every device; int32 sums them.
    for start in range(0, k, _EXACT_INT8_TERMS):
        chunk = slice(start, start + _EXACT_INT8_TERMS)
        acc += (rows[:, chunk].float() @ codes[:, chunk].float().t()).to(torch.int32)
    return scale_products(acc, input.shape, input_scale, scale, bias, dtype)


def linear_float8(
    input: torch.Tensor,
    input_scale: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """float8 activations times float8 weights (W8A8 fp8), scaled as linear_int8.

    input float8_e4m3fn or float8_e5m2 [..., K] with input_scale of one element or [..., 1];
    codes float8 [N, K] with scale [N, 1]. The products are summed in fp32 (as fp8 tensor
    cores do), then scaled as linear_int8's, and the result returned in dtype.
    """
    v.check_linear_float8(input, input_scale, codes, scale, bias, dtype)
    rows = input.reshape(math.prod(input.shape[:-1]), codes.shape[1])
    acc = rows.float() @ codes.float().t()
    return scale_products(acc, input.shape, input_scale, scale, bias, dtype)


def scale_products(
    acc: torch.Tensor,
    input_shape: torch.Size,
    input_scale: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The output of a W8A8 linear from its code products acc [rows, N]: acc * input_scale *
    scaleᵀ + bias in fp32, in that order, reshaped to [..., N] and returned in dtype."""
    row_scale = input_scale.float().reshape(-1, 1)
    out = acc.float() * row_scale * scale.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.reshape(*input_shape[:-1], acc.shape[-1]).to(dtype)


def _per_group(values: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """values [rows, K] times scale [rows, K // group_size] per group of K, in fp32."""
    rows, k = values.shape
    grouped = values.float().reshape(rows, k // group_size, group_size)
    return (grouped * scale.float().unsqueeze(-1)).reshape(rows, k)


# The preference between two codes at the same distance: the even one (round-to-nearest-even for
# e2m1 in code order), then the lower one.
_LUT4_TIE_ORDER = (*range(0, 16, 2), *range(1, 16, 2))


def quantize_lut4(
    input: torch.Tensor, table: torch.Tensor, scale: torch.Tensor, group_size: int
) -> torch.Tensor:
    """uint8 codes [N, K]: the code whose table value is nearest to input / scale (fp32).

    Ties go to the even code; values beyond the table saturate to its nearest end; a zero scale
    gives the code nearest to 0; NaN gives some code (the scale is where a NaN is kept). table:
    float32 [16], any order; scale [N, K // group_size], as every lut4 and grouped op takes it:
    float, float8_e4m3fn (NVFP4) or float8_e8m0fnu (MX formats; torch's dtype, not uint8 bits).
    """
    v.check_quantize_lut4(input, table, scale, group_size)
    scale = scale.float().repeat_interleave(group_size, dim=1)
    scaled = torch.where(scale == 0, 0.0, input.float() / scale)
    # The nearest value is one of the two table values around input / scale (a binary search,
    # in memory O(N * K)); equal table values (0 and -0) all stand for their preferred code.
    rank = torch.empty(16, dtype=torch.long, device=table.device)
    rank[list(_LUT4_TIE_ORDER)] = torch.arange(16, device=table.device)
    same = table.unsqueeze(0) == table.unsqueeze(1)
    preferred = torch.where(same, rank, 16).argmin(dim=1)  # for each code, among its equals
    values, order = table.sort(stable=True)
    codes, code_rank = preferred[order], rank[preferred[order]]
    scaled = scaled.clamp(values[0], values[-1])  # ±Inf to the ends, where distances are finite
    upper = torch.searchsorted(values, scaled).clamp(1, 15)
    lower = upper - 1
    distance_upper = (scaled - values[upper]).abs()
    distance_lower = (scaled - values[lower]).abs()
    take_upper = (distance_upper < distance_lower) | (
        (distance_upper == distance_lower) & (code_rank[upper] < code_rank[lower])
    )
    return torch.where(take_upper, codes[upper], codes[lower]).to(torch.uint8)


def dequantize_lut4(
    codes: torch.Tensor,
    table: torch.Tensor,
    scale: torch.Tensor,
    group_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """table[codes] * scale per group of K, in fp32, returned in dtype.

    Only the low 4 bits of each code are read (values are not checked, which would synchronize a
    device), as the packed layout holds them.
    """
    v.check_dequantize_lut4(codes, table, scale, group_size, dtype)
    values = table[(codes & 15).long()]
    return _per_group(values, scale, group_size).to(dtype)


def linear_lut4(
    input: torch.Tensor,
    packed: torch.Tensor,
    table: torch.Tensor,
    scale: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """input [..., K] @ dequantize_lut4(unpack(packed, 4))ᵀ + bias, in input's dtype."""
    v.check_linear_lut4(input, packed, table, scale, group_size, bias)
    codes = torch.ops.quanta.unpack(packed, 4, input.shape[-1])
    weight = torch.ops.quanta.dequantize_lut4(codes, table, scale, group_size, input.dtype)
    return F.linear(input, weight, None if bias is None else bias.to(input.dtype))


def dequantize_grouped(
    codes: torch.Tensor, scale: torch.Tensor, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """codes (int8 or float8) * scale per group of K, in fp32, returned in dtype."""
    v.check_dequantize_grouped(codes, scale, group_size, dtype)
    return _per_group(codes, scale, group_size).to(dtype)


def linear_grouped(
    input: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """input [..., K] @ dequantize_grouped(codes, scale)ᵀ + bias, in input's dtype."""
    v.check_linear_grouped(input, codes, scale, group_size, bias)
    weight = torch.ops.quanta.dequantize_grouped(codes, scale, group_size, input.dtype)
    return F.linear(input, weight, None if bias is None else bias.to(input.dtype))
