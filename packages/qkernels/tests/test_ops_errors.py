"""Bad arguments fail early, with a message naming the argument and what is allowed."""

import pytest
import torch

u8 = torch.uint8


def _packed(k=8, n=4):
    return torch.zeros(n, (k * 4 + 7) // 8, dtype=u8)


BAD_CALLS = {
    "pack_bits": (
        lambda: torch.ops.quanta.pack(torch.zeros(4, dtype=u8), 3),
        r"bits must be one of \(2, 4\), got 3",
    ),
    "pack_dtype": (
        lambda: torch.ops.quanta.pack(torch.zeros(4, dtype=torch.int8), 4),
        r"codes must have dtype in \(uint8\)",
    ),
    "unpack_bits": (
        lambda: torch.ops.quanta.unpack(_packed(), 8, 8),
        r"bits must be one of \(2, 4\), got 8",
    ),
    "unpack_dtype": (
        lambda: torch.ops.quanta.unpack(torch.zeros(4, 4, dtype=torch.int8), 4, 8),
        r"packed must have dtype in \(uint8\)",
    ),
    "unpack_size": (
        lambda: torch.ops.quanta.unpack(_packed(), 4, 9),
        r"packed has 4 bytes in its last dimension, but 9 codes of 4 bits need .* = 5",
    ),
    "quantize_symmetric_dtype": (
        lambda: torch.ops.quanta.quantize_symmetric(
            torch.randn(2, 4), torch.ones(2, 1), torch.int32
        ),
        r"dtype must be one of \(int8, float8_e4m3fn",
    ),
    "quantize_symmetric_scale": (
        lambda: torch.ops.quanta.quantize_symmetric(
            torch.randn(2, 4), torch.ones(3, 1), torch.int8
        ),
        r"scale of shape \(3, 1\) must broadcast to \(2, 4\)",
    ),
    "quantize_dynamic_dtype": (
        lambda: torch.ops.quanta.quantize_dynamic(torch.randn(2, 4), torch.uint8),
        r"quantize_dynamic: dtype must be one of \(int8, float8_e4m3fn",
    ),
    "quantize_dynamic_0d": (
        lambda: torch.ops.quanta.quantize_dynamic(torch.tensor(1.0), torch.int8),
        r"input must have at least one dimension .* got a 0-d tensor",
    ),
    "quantize_dynamic_int_input": (
        lambda: torch.ops.quanta.quantize_dynamic(torch.ones(2, 4, dtype=torch.int32), torch.int8),
        r"quantize_dynamic: input must be a float32, float16, bfloat16 or float64 tensor",
    ),
    "quantize_symmetric_int_input": (
        lambda: torch.ops.quanta.quantize_symmetric(
            torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 1), torch.int8
        ),
        r"input must be a float32, float16, bfloat16 or float64 tensor, got torch.int32",
    ),
    "dequantize_symmetric_codes": (
        lambda: torch.ops.quanta.dequantize_symmetric(
            torch.ones(2, 4, dtype=u8), torch.ones(2, 1), torch.float32
        ),
        r"codes must have dtype in \(int8, float8_e4m3fn",
    ),
    "dequantize_symmetric_target": (
        lambda: torch.ops.quanta.dequantize_symmetric(
            torch.ones(2, 4, dtype=torch.int8), torch.ones(2, 1), torch.int8
        ),
        r"dtype must be one of \(float32, float16, bfloat16, float64\), got torch.int8",
    ),
    "quantize_affine_group_size": (
        lambda: torch.ops.quanta.quantize_affine(
            torch.randn(2, 12), torch.ones(2, 3), torch.zeros(2, 3), 4, 5
        ),
        r"group_size must be a positive divisor of K = 12, got 5",
    ),
    "quantize_affine_scale_shape": (
        lambda: torch.ops.quanta.quantize_affine(
            torch.randn(2, 12), torch.ones(2, 4), torch.zeros(2, 3), 4, 4
        ),
        r"scale must have shape \[rows, K // group_size\] = \[2, 3\], got \[2, 4\]",
    ),
    "quantize_affine_bits": (
        lambda: torch.ops.quanta.quantize_affine(
            torch.randn(2, 12), torch.ones(2, 3), torch.zeros(2, 3), 9, 4
        ),
        r"bits must be one of \(1, 2, 3, 4, 5, 6, 7, 8\), got 9",
    ),
    "dequantize_affine_codes": (
        lambda: torch.ops.quanta.dequantize_affine(
            torch.ones(2, 12, dtype=torch.int8),
            torch.ones(2, 3),
            torch.zeros(2, 3),
            4,
            torch.float32,
        ),
        r"codes must have dtype in \(uint8\), got torch.int8",
    ),
    "dequantize_affine_zero_point": (
        lambda: torch.ops.quanta.dequantize_affine(
            torch.ones(2, 12, dtype=u8),
            torch.ones(2, 3),
            torch.zeros(2, 3, dtype=torch.int32),
            4,
            torch.float32,
        ),
        r"zero_point must be uint8 or floating point, got torch.int32",
    ),
    "linear_symmetric_scale": (
        lambda: torch.ops.quanta.linear_symmetric(
            torch.randn(3, 8), torch.ones(4, 8, dtype=torch.int8), torch.ones(4), None
        ),
        r"scale must have shape \[N, 1\] = \[4, 1\], got \[4\]",
    ),
    "linear_symmetric_k": (
        lambda: torch.ops.quanta.linear_symmetric(
            torch.randn(3, 7), torch.ones(4, 8, dtype=torch.int8), torch.ones(4, 1), None
        ),
        r"input must be \[\.\.\., K\] with K = 8",
    ),
    "linear_symmetric_bias": (
        lambda: torch.ops.quanta.linear_symmetric(
            torch.randn(3, 8), torch.ones(4, 8, dtype=torch.int8), torch.ones(4, 1), torch.ones(5)
        ),
        r"bias must have shape \[N\] = \[4\], got \[5\]",
    ),
    "linear_affine_bits": (
        lambda: torch.ops.quanta.linear_affine(
            torch.randn(3, 8), _packed(), torch.ones(4, 2), torch.zeros(4, 2), 3, 4, None
        ),
        r"bits must be one of \(2, 4\), got 3",
    ),
    "linear_affine_packed_width": (
        lambda: torch.ops.quanta.linear_affine(
            torch.randn(3, 10), _packed(), torch.ones(4, 2), torch.zeros(4, 2), 4, 5, None
        ),
        r"packed has 4 bytes in its last dimension, but 10 codes of 4 bits need .* = 5",
    ),
    "linear_affine_group_size": (
        lambda: torch.ops.quanta.linear_affine(
            torch.randn(3, 8), _packed(), torch.ones(4, 2), torch.zeros(4, 2), 4, 3, None
        ),
        r"group_size must be a positive divisor of K = 8, got 3",
    ),
    "linear_affine_input_dtype": (
        lambda: torch.ops.quanta.linear_affine(
            torch.ones(3, 8, dtype=torch.int32),
            _packed(),
            torch.ones(4, 2),
            torch.zeros(4, 2),
            4,
            4,
            None,
        ),
        r"input must be a float32, float16, bfloat16 or float64 tensor",
    ),
    "linear_int8_input_dtype": (
        lambda: torch.ops.quanta.linear_int8(
            torch.randn(3, 8),
            torch.ones(3, 1),
            torch.ones(4, 8, dtype=torch.int8),
            torch.ones(4, 1),
            None,
            torch.float32,
        ),
        r"input must have dtype in \(int8\), got torch.float32",
    ),
    "linear_int8_input_scale": (
        lambda: torch.ops.quanta.linear_int8(
            torch.ones(2, 3, 8, dtype=torch.int8),
            torch.ones(3, 1),
            torch.ones(4, 8, dtype=torch.int8),
            torch.ones(4, 1),
            None,
            torch.float32,
        ),
        r"input_scale must have one element \(per tensor\) or shape \[2, 3, 1\] .*got \[3, 1\]",
    ),
    "linear_int8_dtype": (
        lambda: torch.ops.quanta.linear_int8(
            torch.ones(3, 8, dtype=torch.int8),
            torch.ones(()),
            torch.ones(4, 8, dtype=torch.int8),
            torch.ones(4, 1),
            None,
            torch.int32,
        ),
        r"dtype must be one of \(float32, float16, bfloat16, float64\), got torch.int32",
    ),
    "linear_float8_input_dtype": (
        lambda: torch.ops.quanta.linear_float8(
            torch.ones(3, 8, dtype=torch.int8),
            torch.ones(3, 1),
            torch.ones(4, 8).to(torch.float8_e4m3fn),
            torch.ones(4, 1),
            None,
            torch.bfloat16,
        ),
        r"linear_float8: input must have dtype in \(float8_e4m3fn, float8_e5m2\), got torch.int8",
    ),
    "linear_float8_codes_dtype": (
        lambda: torch.ops.quanta.linear_float8(
            torch.ones(3, 8).to(torch.float8_e4m3fn),
            torch.ones(()),
            torch.ones(4, 8, dtype=torch.int8),
            torch.ones(4, 1),
            None,
            torch.bfloat16,
        ),
        r"linear_float8: codes must have dtype in \(float8_e4m3fn, float8_e5m2\)",
    ),
    "quantize_lut4_table_shape": (
        lambda: torch.ops.quanta.quantize_lut4(
            torch.randn(2, 8), torch.zeros(8), torch.ones(2, 2), 4
        ),
        r"quantize_lut4: table must have shape \[16\] .*got \[8\]",
    ),
    "dequantize_lut4_scale_dtype": (
        lambda: torch.ops.quanta.dequantize_lut4(
            torch.zeros(2, 8, dtype=u8),
            torch.zeros(16),
            torch.ones(2, 2, dtype=u8),
            4,
            torch.float32,
        ),
        r"dequantize_lut4: scale must have dtype in \(float32, .*float8_e8m0fnu\), got torch.uint8",
    ),
    "linear_lut4_scale_shape": (
        lambda: torch.ops.quanta.linear_lut4(
            torch.randn(3, 8), _packed(), torch.zeros(16), torch.ones(4, 3), 4, None
        ),
        r"linear_lut4: scale must have shape \[rows, K // group_size\] = \[4, 2\], got \[4, 3\]",
    ),
    "linear_grouped_codes_dtype": (
        lambda: torch.ops.quanta.linear_grouped(
            torch.randn(3, 8), torch.zeros(4, 8, dtype=u8), torch.ones(4, 2), 4, None
        ),
        r"linear_grouped: codes must have dtype in \(int8, float8_e4m3fn, float8_e5m2\)",
    ),
    "dequantize_grouped_group_size": (
        lambda: torch.ops.quanta.dequantize_grouped(
            torch.zeros(2, 8, dtype=torch.int8), torch.ones(2, 2), 3, torch.float32
        ),
        r"dequantize_grouped: group_size must be a positive divisor of K = 8, got 3",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_arguments_raise_a_clear_error(name):
    call, message = BAD_CALLS[name]
    # Python kernels raise TypeError/ValueError; the native C++ ones raise RuntimeError.
    with pytest.raises((TypeError, ValueError, RuntimeError), match=message):
        call()


@pytest.mark.parametrize(
    "name",
    [
        "unpack_size",
        "linear_affine_group_size",
        "quantize_symmetric_scale",
        "linear_int8_input_scale",
        "linear_lut4_scale_shape",
    ],
)
def test_bad_arguments_raise_on_meta_tensors_too(name):
    call, message = BAD_CALLS[name]
    with torch.device("meta"), pytest.raises((TypeError, ValueError, RuntimeError), match=message):
        call()
