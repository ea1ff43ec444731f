"""The argument checks of every op, run by its reference implementation and its fake kernel.

They look only at shapes, dtypes and ints (never at tensor values), so they run unchanged on
real, fake and meta tensors and never synchronize a device. The native kernels run the same
checks, with the same messages, from one C++ header (csrc/checks.h).
"""

from __future__ import annotations

import torch

SYMMETRIC_CODE_DTYPES = (
    torch.int8,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: Scales of the lookup-table (lut4) and grouped 8-bit weights: float, or float8 as the microscaling
#: formats store them (e4m3 for NVFP4, e8m0 = 2**(e - 127) with 0xFF NaN for MXFP4 / MXFP8).
GROUP_SCALE_DTYPES = (*FLOAT_DTYPES, torch.float8_e4m3fn, torch.float8_e8m0fnu)
GROUPED_CODE_DTYPES = (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)
LUT4_TABLE_SIZE = 16
PACK_BITS = (2, 4)
AFFINE_BITS = tuple(range(1, 9))  # uint8 codes hold up to 8 bits


def _names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_dtype(op: str, name: str, tensor: torch.Tensor, allowed) -> None:
    if tensor.dtype not in allowed:
        raise TypeError(
            f"quanta::{op}: {name} must have dtype in ({_names(allowed)}), got {tensor.dtype}"
        )


def check_target_dtype(op: str, dtype: torch.dtype, allowed) -> None:
    if dtype not in allowed:
        raise ValueError(f"quanta::{op}: dtype must be one of ({_names(allowed)}), got {dtype}")


def check_floating(op: str, name: str, tensor: torch.Tensor) -> None:
    if not tensor.dtype.is_floating_point or tensor.dtype.itemsize == 1:
        raise TypeError(
            f"quanta::{op}: {name} must be a float32, float16, bfloat16 or float64 tensor, "
            f"got {tensor.dtype}"
        )


def check_broadcasts_to(op: str, name: str, tensor: torch.Tensor, shape: torch.Size) -> None:
    try:
        broadcast = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(
            f"quanta::{op}: {name} of shape {tuple(tensor.shape)} must broadcast to "
            f"{tuple(shape)} without enlarging it"
        )


def check_bits(op: str, bits: int, allowed) -> None:
    if bits not in allowed:
        choices = ", ".join(map(str, allowed))
        raise ValueError(f"quanta::{op}: bits must be one of ({choices}), got {bits}")


def packed_width(size: int, bits: int) -> int:
    """Bytes that `size` codes of `bits` bits occupy: ceil(size * bits / 8)."""
    return (size * bits + 7) // 8


def check_packed(op: str, name: str, packed: torch.Tensor, size: int, bits: int) -> None:
    check_dtype(op, name, packed, (torch.uint8,))
    if packed.dim() < 1:
        raise ValueError(f"quanta::{op}: {name} must have at least one dimension, got a scalar")
    width = packed_width(size, bits)
    if packed.shape[-1] != width:
        raise ValueError(
            f"quanta::{op}: {name} has {packed.shape[-1]} bytes in its last dimension, but "
            f"{size} codes of {bits} bits need ceil(size * bits / 8) = {width}"
        )


def check_group_scale(
    op: str, values_name: str, values: torch.Tensor, group_size: int, **scales: torch.Tensor
) -> None:
    """values [rows, K]; each of scales [rows, K // group_size]."""
    if values.dim() != 2:
        raise ValueError(
            f"quanta::{op}: {values_name} must be 2-D [rows, K], got shape {tuple(values.shape)}"
        )
    rows, k = values.shape
    if group_size <= 0 or k % group_size != 0:
        raise ValueError(
            f"quanta::{op}: group_size must be a positive divisor of K = {k}, got {group_size}"
        )
    groups_shape = (rows, k // group_size)
    for name, tensor in scales.items():
        if tuple(tensor.shape) != groups_shape:
            raise ValueError(
                f"quanta::{op}: {name} must have shape [rows, K // group_size] = "
                f"{list(groups_shape)}, got {list(tensor.shape)}"
            )


def check_groups(
    op: str,
    values_name: str,
    values: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
) -> None:
    """values [rows, K]; scale and zero_point [rows, K // group_size]."""
    check_group_scale(op, values_name, values, group_size, scale=scale, zero_point=zero_point)
    check_floating(op, "scale", scale)
    if zero_point.dtype != torch.uint8 and not zero_point.dtype.is_floating_point:
        raise TypeError(
            f"quanta::{op}: zero_point must be uint8 or floating point, got {zero_point.dtype}"
        )


def check_linear_input(op: str, input: torch.Tensor, k: int) -> None:
    check_floating(op, "input", input)
    check_input_k(op, input, k)


def check_input_k(op: str, input: torch.Tensor, k: int) -> None:
    if input.dim() < 1 or input.shape[-1] != k:
        raise ValueError(
            f"quanta::{op}: input must be [..., K] with K = {k} (the weight's K), "
            f"got shape {tuple(input.shape)}"
        )


def check_bias(op: str, bias: torch.Tensor | None, n: int) -> None:
    if bias is None:
        return
    check_floating(op, "bias", bias)
    if tuple(bias.shape) != (n,):
        raise ValueError(f"quanta::{op}: bias must have shape [N] = [{n}], got {list(bias.shape)}")


# ---- the checks of each op, run by its reference and its fake kernel -------------------------
def check_quantize_symmetric(input, scale, dtype) -> None:
    op = "quantize_symmetric"
    check_floating(op, "input", input)
    check_floating(op, "scale", scale)
    check_target_dtype(op, dtype, SYMMETRIC_CODE_DTYPES)
    check_broadcasts_to(op, "scale", scale, input.shape)


def check_quantize_dynamic(input, dtype) -> None:
    op = "quantize_dynamic"
    check_floating(op, "input", input)
    if input.dim() == 0:
        raise ValueError(
            f"quanta::{op}: input must have at least one dimension (each row of the last one "
            "gets a scale), got a 0-d tensor"
        )
    check_target_dtype(op, dtype, SYMMETRIC_CODE_DTYPES)


def check_dequantize_symmetric(codes, scale, dtype) -> None:
    op = "dequantize_symmetric"
    check_dtype(op, "codes", codes, SYMMETRIC_CODE_DTYPES)
    check_floating(op, "scale", scale)
    check_target_dtype(op, dtype, FLOAT_DTYPES)
    check_broadcasts_to(op, "scale", scale, codes.shape)


def check_quantize_affine(input, scale, zero_point, bits, group_size) -> None:
    op = "quantize_affine"
    check_bits(op, bits, AFFINE_BITS)
    check_floating(op, "input", input)
    check_groups(op, "input", input, scale, zero_point, group_size)


def check_dequantize_affine(codes, scale, zero_point, group_size, dtype) -> None:
    op = "dequantize_affine"
    check_dtype(op, "codes", codes, (torch.uint8,))
    check_target_dtype(op, dtype, FLOAT_DTYPES)
    check_groups(op, "codes", codes, scale, zero_point, group_size)


def check_pack(codes, bits) -> None:
    check_bits("pack", bits, PACK_BITS)
    check_dtype("pack", "codes", codes, (torch.uint8,))
    if codes.dim() < 1:
        raise ValueError("quanta::pack: codes must have at least one dimension, got a scalar")


def check_unpack(packed, bits, size) -> None:
    check_bits("unpack", bits, PACK_BITS)
    if size < 0:
        raise ValueError(f"quanta::unpack: size must be >= 0, got {size}")
    check_packed("unpack", "packed", packed, size, bits)


def check_symmetric_weight(op: str, codes, scale, code_dtypes) -> None:
    """codes [N, K] of one of code_dtypes, with a floating scale [N, 1]."""
    check_dtype(op, "codes", codes, code_dtypes)
    if codes.dim() != 2:
        raise ValueError(f"quanta::{op}: codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    n = codes.shape[0]
    check_floating(op, "scale", scale)
    if tuple(scale.shape) != (n, 1):
        raise ValueError(
            f"quanta::{op}: scale must have shape [N, 1] = [{n}, 1], got {list(scale.shape)}"
        )


def check_linear_symmetric(input, codes, scale, bias) -> None:
    op = "linear_symmetric"
    check_symmetric_weight(op, codes, scale, SYMMETRIC_CODE_DTYPES)
    check_linear_input(op, input, codes.shape[1])
    check_bias(op, bias, codes.shape[0])


def check_linear_int8(input, input_scale, codes, scale, bias, dtype) -> None:
    check_w8a8("linear_int8", (torch.int8,), input, input_scale, codes, scale, bias, dtype)


def check_linear_float8(input, input_scale, codes, scale, bias, dtype) -> None:
    float8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    check_w8a8("linear_float8", float8, input, input_scale, codes, scale, bias, dtype)


def check_w8a8(op: str, code_dtypes, input, input_scale, codes, scale, bias, dtype) -> None:
    """8-bit activations [..., K] with a per-tensor or per-row scale times 8-bit weights."""
    check_symmetric_weight(op, codes, scale, code_dtypes)
    n, k = codes.shape
    check_dtype(op, "input", input, code_dtypes)
    check_input_k(op, input, k)
    check_floating(op, "input_scale", input_scale)
    per_row = (*input.shape[:-1], 1)
    if input_scale.numel() != 1 and tuple(input_scale.shape) != per_row:
        raise ValueError(
            f"quanta::{op}: input_scale must have one element (per tensor) or shape "
            f"{list(per_row)} (one per row of input), got {list(input_scale.shape)}"
        )
    check_bias(op, bias, n)
    check_target_dtype(op, dtype, FLOAT_DTYPES)


def check_packed_weight(op: str, input, packed, bits: int) -> tuple[int, int]:
    """input [..., K] float and packed [N, ceil(K * bits / 8)]; returns (N, K)."""
    if input.dim() < 1:
        raise ValueError(f"quanta::{op}: input must be [..., K], got a scalar")
    k = input.shape[-1]
    check_floating(op, "input", input)
    check_packed(op, "packed", packed, k, bits)
    if packed.dim() != 2:
        raise ValueError(
            f"quanta::{op}: packed must be 2-D [N, ceil(K * bits / 8)], got shape "
            f"{tuple(packed.shape)}"
        )
    return packed.shape[0], k


def check_linear_affine(input, packed, scale, zero_point, bits, group_size, bias) -> None:
    op = "linear_affine"
    check_bits(op, bits, PACK_BITS)
    n, k = check_packed_weight(op, input, packed, bits)
    # Check the groups against the [N, K] weight the packed codes stand for.
    check_groups(
        op, "weight", packed.new_empty((n, k), device="meta"), scale, zero_point, group_size
    )
    check_bias(op, bias, n)


def check_table(op: str, table) -> None:
    check_dtype(op, "table", table, (torch.float32,))
    if tuple(table.shape) != (LUT4_TABLE_SIZE,):
        raise ValueError(
            f"quanta::{op}: table must have shape [{LUT4_TABLE_SIZE}] (the value of each 4-bit "
            f"code), got {list(table.shape)}"
        )


def check_scaled_groups(op: str, values_name: str, values, scale, group_size: int) -> None:
    """values [rows, K] with a scale [rows, K // group_size] of GROUP_SCALE_DTYPES."""
    check_group_scale(op, values_name, values, group_size, scale=scale)
    check_dtype(op, "scale", scale, GROUP_SCALE_DTYPES)


def check_quantize_lut4(input, table, scale, group_size) -> None:
    op = "quantize_lut4"
    check_floating(op, "input", input)
    check_table(op, table)
    check_scaled_groups(op, "input", input, scale, group_size)


def check_dequantize_lut4(codes, table, scale, group_size, dtype) -> None:
    op = "dequantize_lut4"
    check_dtype(op, "codes", codes, (torch.uint8,))
    check_table(op, table)
    check_scaled_groups(op, "codes", codes, scale, group_size)
    check_target_dtype(op, dtype, FLOAT_DTYPES)


def check_linear_lut4(input, packed, table, scale, group_size, bias) -> None:
    op = "linear_lut4"
    n, k = check_packed_weight(op, input, packed, 4)
    check_table(op, table)
    weight = packed.new_empty((n, k), device="meta")
    check_scaled_groups(op, "weight", weight, scale, group_size)
    check_bias(op, bias, n)


def check_dequantize_grouped(codes, scale, group_size, dtype) -> None:
    op = "dequantize_grouped"
    check_dtype(op, "codes", codes, GROUPED_CODE_DTYPES)
    check_scaled_groups(op, "codes", codes, scale, group_size)
    check_target_dtype(op, dtype, FLOAT_DTYPES)


def check_linear_grouped(input, codes, scale, group_size, bias) -> None:
    op = "linear_grouped"
    check_dtype(op, "codes", codes, GROUPED_CODE_DTYPES)
    check_scaled_groups(op, "codes", codes, scale, group_size)
    check_linear_input(op, input, codes.shape[1])
    check_bias(op, bias, codes.shape[0])
