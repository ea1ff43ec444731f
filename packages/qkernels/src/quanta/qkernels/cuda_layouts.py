"""Kernel layouts of torch's own CUDA kernels, built in memory from quanta's canonical layout.

Only tinygemm (``aten._weight_int4pack_mm``) needs a weight layout of its own: ``_int_mm`` and
``_scaled_mm`` take the canonical codes [N, K] as they are, through the column-major view
``codes.t()`` that cuBLASLt wants for its second operand. A tinygemm form is never stored in a
checkpoint; the layer that owns the weight builds it once (qmodules' ``QBitsTensor``), since a
conversion per call would cost more than the matrix-vector product itself.

On CPU, torch's twins of the tinygemm ops (``_convert_weight_to_int4pack_for_cpu``,
``_weight_int4pack_mm_for_cpu``) take the same scale-and-zeros tensor: the tests run the
conversion end to end there.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Group sizes tinygemm handles.
INT4PACK_GROUP_SIZES = (32, 64, 128, 256)
#: tinygemm's tiles: N in rows of 8, K in tiles of 16 taken `inner_k_tiles` (2, 4 or 8) at a time.
INT4PACK_N_TILE, INT4PACK_K_TILE = 8, 16
#: The code tinygemm subtracts before scaling: value = (code - 8) * scale + zero.
INT4PACK_MIDDLE = 8


class Int4Pack(NamedTuple):
    """A 4-bit affine weight [N, K] in tinygemm's layout: the codes in tiles and a
    [K // group_size, N, 2] tensor of (scale, zero) pairs, bfloat16."""

    weight: torch.Tensor
    scales_and_zeros: torch.Tensor


def inner_k_tiles(k: int) -> int | None:
    """The widest tinygemm K tiling that divides K (8, 4 or 2 tiles of 16), or None."""
    for tiles in (8, 4, 2):
        if k % (tiles * INT4PACK_K_TILE) == 0:
            return tiles
    return None


def int4pack_fits(n: int, k: int, bits: int, group_size: int) -> bool:
    """Whether tinygemm can hold a `bits`-bit affine weight [N, K] with this group size."""
    return (
        bits == 4
        and group_size in INT4PACK_GROUP_SIZES
        and k % group_size == 0
        and n % INT4PACK_N_TILE == 0
        and inner_k_tiles(k) is not None
    )


def int4pack_source(packed: torch.Tensor) -> torch.Tensor:
    """quanta's packed 4-bit codes [N, K / 2] as ``_convert_weight_to_int4pack`` (CUDA) takes
    them: uint8 [N, K / 2] with code 2i in the high nibble of byte i and code 2i + 1 in the low
    one, where quanta's pack puts code 2i low: the nibbles of each byte swapped."""
    return (packed << 4) | (packed >> 4)


def scales_and_zeros(scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """tinygemm's [K // group_size, N, 2] bfloat16 (scale, zero) pairs for quanta's scale and
    zero point [N, K // group_size] (uint8 or float).

    quanta: (q - zero_point) * scale = (q - 8) * scale + (8 - zero_point) * scale: tinygemm's
    zero is (8 - zero_point) * scale, computed in fp32 and rounded once to bfloat16.
    """
    zero = (INT4PACK_MIDDLE - zero_point.float()) * scale.float()
    pairs = torch.stack((scale.float(), zero), dim=-1)
    return pairs.transpose(0, 1).contiguous().to(torch.bfloat16)


def to_int4pack(
    packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int
) -> Int4Pack:
    """The tinygemm form of a 4-bit affine weight (``quanta::linear_affine``'s parts).

    Memory: as much as the canonical codes and about twice the scales (``int4pack_fits`` must
    hold). On CPU, torch's CPU twin of the layout is built (for the tests).
    """
    width = packed.shape[1]
    tiles = inner_k_tiles(2 * width)
    if packed.device.type == "cpu":
        codes = torch.ops.quanta.unpack(packed, 4, 2 * width).to(torch.int32)
        weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, tiles)
    else:
        weight = torch.ops.aten._convert_weight_to_int4pack(int4pack_source(packed), tiles)
    return Int4Pack(weight, scales_and_zeros(scale, zero_point))


def int4pack_mm(input: torch.Tensor, form: Int4Pack, group_size: int) -> torch.Tensor:
    """input [M, K] bfloat16 (contiguous) @ the weight of `form`ᵀ: [M, N] bfloat16."""
    if input.device.type == "cpu":
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
    else:
        mm = torch.ops.aten._weight_int4pack_mm
    return mm(input, form.weight, group_size, form.scales_and_zeros)
