"""Argument checks shared by the reference implementations and the fake kernels.

They look only at shapes, dtypes and ints (never at tensor values), so they run unchanged on
real, fake and meta tensors and never synchronize a device.
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


def check_groups(
    op: str,
    values_name: str,
    values: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
) -> None:
    """values [rows, K]; scale and zero_point [rows, K // group_size]."""
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
    for name, tensor in (("scale", scale), ("zero_point", zero_point)):
        if tuple(tensor.shape) != groups_shape:
            raise ValueError(
                f"quanta::{op}: {name} must have shape [rows, K // group_size] = "
                f"{list(groups_shape)}, got {list(tensor.shape)}"
            )
    check_floating(op, "scale", scale)
    if zero_point.dtype != torch.uint8 and not zero_point.dtype.is_floating_point:
        raise TypeError(
            f"quanta::{op}: zero_point must be uint8 or floating point, got {zero_point.dtype}"
        )


def check_linear_input(op: str, input: torch.Tensor, k: int) -> None:
    check_floating(op, "input", input)
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
