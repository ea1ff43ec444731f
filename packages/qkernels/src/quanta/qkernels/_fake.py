"""Fake (meta) kernels: output shapes and dtypes of every op, for torch.compile and export.

Each runs the argument checks of its op (_validate.py), as its reference implementation does,
then allocates the output.
"""

from __future__ import annotations

import torch

from quanta.qkernels import _validate as v


def quantize_symmetric(input, scale, dtype):
    v.check_quantize_symmetric(input, scale, dtype)
    return torch.empty_like(input, dtype=dtype, memory_format=torch.contiguous_format)


def quantize_dynamic(input, dtype):
    v.check_quantize_dynamic(input, dtype)
    codes = torch.empty_like(input, dtype=dtype, memory_format=torch.contiguous_format)
    return codes, input.new_empty(*input.shape[:-1], 1)


def dequantize_symmetric(codes, scale, dtype):
    v.check_dequantize_symmetric(codes, scale, dtype)
    return torch.empty_like(codes, dtype=dtype, memory_format=torch.contiguous_format)


def quantize_affine(input, scale, zero_point, bits, group_size):
    v.check_quantize_affine(input, scale, zero_point, bits, group_size)
    return input.new_empty(input.shape, dtype=torch.uint8)


def dequantize_affine(codes, scale, zero_point, group_size, dtype):
    v.check_dequantize_affine(codes, scale, zero_point, group_size, dtype)
    return codes.new_empty(codes.shape, dtype=dtype)


def pack(codes, bits):
    v.check_pack(codes, bits)
    width = v.packed_width(codes.shape[-1], bits)
    return codes.new_empty((*codes.shape[:-1], width))


def unpack(packed, bits, size):
    v.check_unpack(packed, bits, size)
    return packed.new_empty((*packed.shape[:-1], size))


def linear_symmetric(input, codes, scale, bias):
    v.check_linear_symmetric(input, codes, scale, bias)
    return input.new_empty((*input.shape[:-1], codes.shape[0]))


def linear_affine(input, packed, scale, zero_point, bits, group_size, bias):
    v.check_linear_affine(input, packed, scale, zero_point, bits, group_size, bias)
    return input.new_empty((*input.shape[:-1], packed.shape[0]))


def linear_int8(input, input_scale, codes, scale, bias, dtype):
    v.check_linear_int8(input, input_scale, codes, scale, bias, dtype)
    return input.new_empty((*input.shape[:-1], codes.shape[0]), dtype=dtype)


def linear_float8(input, input_scale, codes, scale, bias, dtype):
    v.check_linear_float8(input, input_scale, codes, scale, bias, dtype)
    return input.new_empty((*input.shape[:-1], codes.shape[0]), dtype=dtype)


def quantize_lut4(input, table, scale, group_size):
    v.check_quantize_lut4(input, table, scale, group_size)
    return input.new_empty(input.shape, dtype=torch.uint8)


def dequantize_lut4(codes, table, scale, group_size, dtype):
    v.check_dequantize_lut4(codes, table, scale, group_size, dtype)
    return codes.new_empty(codes.shape, dtype=dtype)


def linear_lut4(input, packed, table, scale, group_size, bias):
    v.check_linear_lut4(input, packed, table, scale, group_size, bias)
    return input.new_empty((*input.shape[:-1], packed.shape[0]))


def dequantize_grouped(codes, scale, group_size, dtype):
    v.check_dequantize_grouped(codes, scale, group_size, dtype)
    return codes.new_empty(codes.shape, dtype=dtype)


def linear_grouped(input, codes, scale, group_size, bias):
    v.check_linear_grouped(input, codes, scale, group_size, bias)
    return input.new_empty((*input.shape[:-1], codes.shape[0]))
