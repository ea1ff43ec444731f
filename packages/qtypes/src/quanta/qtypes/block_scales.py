"""Scales of the block formats: bitsandbytes' absmax per block (with optional double
quantization), the OCP Microscaling v1.0 shared exponent, and NVFP4's two-level scale.

Each function takes a 2D float tensor [rows, K] whose rows divide into blocks of `block_size`
consecutive columns and returns one scale per block, [rows, K // block_size]: the codes are
then the table values nearest to x / scale (quanta.qkernels' quantize_lut4, or a saturating
float8 cast for mxfp8).
"""

from __future__ import annotations

import torch

from quanta.qtypes.qtype import LOOKUP_TABLE, LOOKUP_TABLE_DOUBLE, MICROSCALED, NVFP4, QType

E8M0_BIAS = 127  # e8m0 stores 2**(byte - 127); byte 255 is NaN
E8M0_NAN = 255
E4M3_MAX = 448.0  # the largest finite float8_e4m3fn, NVFP4's block scale format
E4M3_SMALLEST = 2.0**-9  # its smallest subnormal
DOUBLE_QUANT_BLOCK = 256  # bitsandbytes quantizes its absmax scales in blocks of 256
INT8_MAX = 127


def table_absmax_scale(x: torch.Tensor, qtype: QType, block_size: int) -> torch.Tensor:
    """bitsandbytes' nf4/fp4 scale: each block's absmax in x's dtype (the table spans [-1, 1]).

    An all-zero block gets scale 1 (bitsandbytes stores 0) so that quantizing never divides
    by zero; it still dequantizes to exact zeros. A block holding a NaN gets a NaN scale.
    """
    if qtype.layout not in (LOOKUP_TABLE, LOOKUP_TABLE_DOUBLE):
        raise ValueError(f"table_absmax_scale is for nf4/fp4 qtypes, got {qtype}")
    absmax = _blocks(x, block_size).abs().amax(dim=-1)
    return torch.where(absmax == 0, torch.ones_like(absmax), absmax)


def double_quantize_scale(
    scale: torch.Tensor, block_size: int = DOUBLE_QUANT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """QLoRA's double quantization of nf4/fp4 scales: (codes, code_scale, offset).

    As in bitsandbytes, the mean is subtracted from the float32 scales, which are then
    quantized in blocks of 256 (flattened, the last block possibly shorter) with an absmax
    scale each. Unlike bitsandbytes, whose codes index its 8-bit dynamic-exponent map, the
    codes here are plain symmetric int8 (round to nearest): the storage is not bitsandbytes'
    bit format, and its error is at most half a step of each block's absmax / 127.
    codes: int8 of scale's shape; code_scale: float32 [ceil(numel / block_size)]; offset:
    float32 [1]. A NaN or Inf scale makes its block's code_scale NaN (the mean and the other
    blocks ignore it). `double_dequantize_scale` inverts it.
    """
    flat = scale.float().flatten()
    finite = flat.isfinite()
    offset = (torch.where(finite, flat, 0).sum() / finite.sum().clamp(min=1)).reshape(1)
    padding = -flat.numel() % block_size
    blocks = torch.nn.functional.pad(flat - offset, (0, padding)).reshape(-1, block_size)
    kept = torch.where(blocks.isfinite(), blocks, 0)
    absmax = kept.abs().amax(dim=-1)
    code_scale = torch.where(absmax == 0, torch.ones_like(absmax), absmax / INT8_MAX)
    codes = torch.round(kept / code_scale[:, None]).clamp(-INT8_MAX, INT8_MAX)
    code_scale = torch.where(blocks.isfinite().all(dim=-1), code_scale, torch.nan)
    codes = codes.flatten()[: flat.numel()].to(torch.int8).reshape(scale.shape)
    return codes, code_scale, offset


def double_dequantize_scale(
    codes: torch.Tensor,
    code_scale: torch.Tensor,
    offset: torch.Tensor,
    block_size: int = DOUBLE_QUANT_BLOCK,
) -> torch.Tensor:
    """The float32 scales of `double_quantize_scale`'s parts."""
    flat = codes.flatten().float()
    per_code = code_scale.float().repeat_interleave(block_size)[: flat.numel()]
    return (flat * per_code + offset.float()).reshape(codes.shape)


def mx_scale(x: torch.Tensor, qtype: QType) -> torch.Tensor:
    """The OCP MX v1.0 shared scale of each block of 32, as float8_e8m0fnu.

    Section 6.3: X = floor(log2(max|block|)) - emax_elem, with emax_elem the exponent of the
    element format's largest normal (2 for e2m1, whose max is 6 = 1.5 * 2**2; 8 for e4m3,
    448 = 1.75 * 2**8); elements are then x / 2**X rounded to nearest-even and clamped to the
    largest normal (saturating). X is clamped to e8m0's range [-127, 127]; an all-zero block
    gets the smallest scale 2**-127 (as Microsoft's microxcaling reference does) and a block
    holding a NaN or an Inf gets the NaN scale.
    """
    _check_layout(qtype, MICROSCALED, "mx_scale")
    absmax = _blocks(x, qtype.block_size).float().abs().amax(dim=-1)
    largest_normal_exponent = torch.frexp(torch.tensor(qtype.qmax)).exponent.item() - 1
    # frexp's exponent is floor(log2(m)) + 1 exactly, with no rounding of log2 near powers of two
    exponent = torch.frexp(absmax).exponent - 1 - largest_normal_exponent
    exponent = torch.where(absmax == 0, -E8M0_BIAS, exponent).clamp(-E8M0_BIAS, E8M0_BIAS)
    biased = torch.where(absmax.isfinite(), exponent + E8M0_BIAS, E8M0_NAN)
    return biased.to(torch.uint8).view(torch.float8_e8m0fnu)


def nvfp4_scales(x: torch.Tensor, qtype: QType) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4's two-level scale: (block scales in float8_e4m3fn [rows, K/16], float32 [1]).

    The tensor scale maps the largest finite |x| onto 6 * 448, the most an e2m1 code times an
    e4m3 scale reaches; each block's scale is its absmax / 6 over the tensor scale, rounded to
    e4m3 (nearest, saturating at 448, and at least e4m3's smallest subnormal so that no block
    divides by zero). x ≈ code * block_scale * tensor_scale. The tensor scale ignores
    non-finite values, so a NaN or an Inf only reaches its own block (whose scale is NaN);
    an all-zero tensor gets tensor scale 1.
    """
    _check_layout(qtype, NVFP4, "nvfp4_scales")
    blocks = _blocks(x, qtype.block_size).float()
    magnitudes = blocks.abs()
    finite_max = torch.where(magnitudes.isfinite(), magnitudes, 0).amax()
    tensor_scale = finite_max / (qtype.qmax * E4M3_MAX)
    tensor_scale = torch.where(tensor_scale > 0, tensor_scale, 1.0).reshape(1)
    block_scale = magnitudes.amax(dim=-1) / qtype.qmax / tensor_scale
    kept = block_scale.clamp(E4M3_SMALLEST, E4M3_MAX)
    block_scale = torch.where(magnitudes.isfinite().all(dim=-1), kept, torch.nan)
    return block_scale.to(torch.float8_e4m3fn), tensor_scale


def _blocks(x: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """x [rows, K] as [rows, K // block_size, block_size]."""
    if x.dim() != 2 or not block_size or x.shape[1] % block_size != 0:
        raise ValueError(
            f"expected a 2D tensor whose columns divide into blocks of {block_size}, "
            f"got shape {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], -1, block_size)


def _check_layout(qtype: QType, layout: str, function: str) -> None:
    if qtype.layout != layout:
        raise ValueError(f"{function} is for {layout} qtypes, got {qtype}")
