"""quantize_* / dequantize_* against independent fp64 expectations."""

import pytest
import torch

FLOAT8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2]
# The ops divide in fp32, the expectation in fp64: a value within rounding error of a .5 tie may
# round the other way, so codes may differ by one step.
CODE_TOLERANCE = 1
# Dequantization in fp32 then cast: one rounding of the output dtype, relative.
DEQUANT_RTOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def test_quantize_symmetric_int8(device):
    input = torch.randn(16, 40, device=device) * 3
    scale = input.abs().amax(dim=1, keepdim=True) / 100  # codes up to ±100
    scale[0] /= 2  # row 0 overflows the int8 range: its codes must clamp
    codes = torch.ops.quanta.quantize_symmetric(input, scale, torch.int8)
    expected = torch.clamp(torch.round(input.double() / scale.double()), -128, 127)
    assert codes.dtype == torch.int8 and codes.shape == input.shape
    torch.testing.assert_close(codes.double(), expected, atol=CODE_TOLERANCE, rtol=0)
    assert codes[0].abs().max() >= 127


@pytest.mark.parametrize("dtype", FLOAT8_DTYPES, ids=str)
def test_quantize_symmetric_float8_clamps(device, dtype):
    input = torch.randn(8, 32, device=device)
    scale = torch.tensor(1e-3, device=device)  # every |input / scale| above ~100: some overflow
    codes = torch.ops.quanta.quantize_symmetric(input, scale, dtype)
    limit = torch.finfo(dtype).max
    expected = (input.double() / 1e-3).clamp(-limit, limit).to(dtype)
    assert codes.dtype == dtype
    assert torch.equal(codes.view(torch.uint8), expected.view(torch.uint8))
    assert torch.isfinite(codes.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("codes_dtype", [torch.int8, *FLOAT8_DTYPES], ids=str)
def test_dequantize_symmetric(device, dtype, codes_dtype):
    codes = (torch.randn(12, 24, device=device) * 50).clamp(-127, 127).to(codes_dtype)
    scale = torch.rand(12, 1, device=device) + 0.01
    out = torch.ops.quanta.dequantize_symmetric(codes, scale, dtype)
    expected = codes.double() * scale.double()
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=DEQUANT_RTOL[dtype], atol=0)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("zero_point_dtype", [torch.uint8, torch.float32], ids=str)
def test_quantize_affine(device, bits, zero_point_dtype):
    rows, k, group_size = 6, 64, 16
    input = torch.randn(rows, k, device=device)
    grouped = input.reshape(rows, -1, group_size)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scale = (high - low) / (2**bits - 1)
    zero_point = torch.round(-low / scale).clamp(0, 2**bits - 1).to(zero_point_dtype)
    scale[0] /= 3  # row 0 leaves the code range: its codes must clamp to [0, 2**bits - 1]
    codes = torch.ops.quanta.quantize_affine(input, scale, zero_point, bits, group_size)

    per_column_scale = scale.double().repeat_interleave(group_size, dim=1)
    per_column_zero = zero_point.double().repeat_interleave(group_size, dim=1)
    expected = torch.round(input.double() / per_column_scale + per_column_zero)
    expected = expected.clamp(0, 2**bits - 1)
    assert codes.dtype == torch.uint8 and codes.shape == (rows, k)
    torch.testing.assert_close(codes.double(), expected, atol=CODE_TOLERANCE, rtol=0)
    assert codes[0].max() == 2**bits - 1 and codes[0].min() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("zero_point_dtype", [torch.uint8, torch.float32], ids=str)
def test_dequantize_affine(device, dtype, zero_point_dtype):
    rows, k, group_size = 5, 96, 32
    codes = torch.randint(0, 16, (rows, k), dtype=torch.uint8, device=device)
    scale = torch.rand(rows, k // group_size, device=device) + 0.01
    zero_point = (torch.rand(rows, k // group_size, device=device) * 15).to(zero_point_dtype)
    out = torch.ops.quanta.dequantize_affine(codes, scale, zero_point, group_size, dtype)
    per_column_scale = scale.double().repeat_interleave(group_size, dim=1)
    per_column_zero = zero_point.double().repeat_interleave(group_size, dim=1)
    expected = (codes.double() - per_column_zero) * per_column_scale
    assert out.dtype == dtype and out.shape == (rows, k)
    torch.testing.assert_close(out.double(), expected, rtol=DEQUANT_RTOL[dtype], atol=1e-6)


def test_affine_round_trip_error_is_half_a_step(device):
    rows, k, group_size, bits = 4, 128, 32, 4
    input = torch.randn(rows, k, device=device)
    grouped = input.reshape(rows, -1, group_size)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scale = (high - low) / (2**bits - 1)
    zero_point = -low / scale  # float zero point: the range maps exactly onto [0, 15]
    codes = torch.ops.quanta.quantize_affine(input, scale, zero_point, bits, group_size)
    restored = torch.ops.quanta.dequantize_affine(
        codes, scale, zero_point, group_size, torch.float32
    )
    error = (restored - input).abs().reshape(rows, -1, group_size)
    assert (error <= scale.unsqueeze(-1) / 2 + 1e-5).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_quantize_affine_never_picks_a_code_that_dequantizes_to_inf(device, dtype):
    """±finfo.max in 2 bits: scale 2 * max / 3 and zero point round(1.5) = 2 put code 0 at
    -4/3 * max, past the limit: -max takes code 1 (-2/3 * max) instead; the rest is as usual."""
    limit = torch.finfo(dtype).max
    input = torch.tensor([[-limit, limit, 0.0, limit / 3]], dtype=dtype, device=device)
    scale = torch.tensor([[limit / 1.5]], dtype=torch.float64, device=device).to(dtype)
    zero_point = torch.tensor([[2]], dtype=torch.uint8, device=device)
    codes = torch.ops.quanta.quantize_affine(input, scale, zero_point, 2, 4)
    values = torch.ops.quanta.dequantize_affine(codes, scale, zero_point, 4, dtype)
    assert codes.tolist() == [[1, 3, 2, 2]]
    assert values.isfinite().all()
