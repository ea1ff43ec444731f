"""quantize_lut4 / dequantize_lut4 / linear_lut4 and dequantize_grouped / linear_grouped: 4-bit
codes looked up in a table (nf4, fp4, MXFP4, NVFP4) and int8 / float8 codes (MXFP8), each times
a scale per group of K, against hand-worked values and an fp64 matmul of the dequantized weight."""

import pytest
import torch
import torch.nn.functional as F
from test_ops_linear import FLOAT_DTYPES, assert_linear_close

# e2m1 (OCP Microscaling v1.0) values in code order: sign bit 3, then 0, 0.5, 1, 1.5, 2, 3, 4, 6.
E2M1_TABLE = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])
N, K, GROUP_SIZE = 24, 64, 16
SCALE_DTYPES = [
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.float8_e4m3fn,
    torch.float8_e8m0fnu,
]


def group_scale(device, dtype, code_magnitude=1.0):
    """Scales that make weights of O(1 / sqrt(K)) from codes of code_magnitude, in dtype
    (e8m0 rounds them to a power of two)."""
    scale = (torch.rand(N, K // GROUP_SIZE, device=device) + 0.5) / (code_magnitude * K**0.5)
    return scale.to(dtype)


def expand(scale):
    return scale.double().repeat_interleave(GROUP_SIZE, dim=1)


def test_quantize_lut4_rounds_e2m1_to_nearest_even_and_saturates(device):
    halfway = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -2.5, -5.0]
    beyond = [7.0, 100.0, -100.0, float("inf"), float("-inf"), 0.1]
    input = torch.tensor([halfway + beyond], device=device)
    codes = torch.ops.quanta.quantize_lut4(
        input, E2M1_TABLE.to(device), torch.ones(1, 1, device=device), input.shape[1]
    )
    values = E2M1_TABLE[codes.cpu().long()]
    expected = [0, 1, 1, 2, 2, 4, 4, -1, -2, -4, 6, 6, -6, 6, -6, 0]
    assert values.tolist() == [expected]


def test_quantize_lut4_nearest_in_an_unordered_table(device):
    table = torch.randn(16, device=device)
    input = torch.randn(N, K, device=device) * 2
    scale = group_scale(device, torch.float32, code_magnitude=K**-0.5)
    codes = torch.ops.quanta.quantize_lut4(input, table, scale, GROUP_SIZE)
    scaled = input / scale.repeat_interleave(GROUP_SIZE, dim=1)
    best = (scaled.unsqueeze(-1) - table).abs().amin(-1)
    torch.testing.assert_close((scaled - table[codes.long()]).abs(), best, rtol=0, atol=0)


def test_quantize_lut4_zero_scale_gives_the_code_of_zero(device):
    input = torch.tensor([[1.0, -3.0, 0.0, 5.0]], device=device)
    codes = torch.ops.quanta.quantize_lut4(
        input, E2M1_TABLE.to(device), torch.zeros(1, 2, device=device), 2
    )
    assert (E2M1_TABLE[codes.cpu().long()] == 0).all()


@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES, ids=str)
def test_dequantize_lut4_is_table_times_group_scale(device, scale_dtype):
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=device)
    table = torch.randn(16, device=device)
    scale = group_scale(device, scale_dtype)
    out = torch.ops.quanta.dequantize_lut4(codes, table, scale, GROUP_SIZE, torch.float32)
    expected = table.double()[codes.long()] * expand(scale)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=0)


def test_e8m0_nan_scale_gives_nan_in_its_group(device):
    scale = torch.full((2, 4), 127, dtype=torch.uint8, device=device)
    scale[1, 2] = 0xFF  # e8m0 NaN
    scale = scale.view(torch.float8_e8m0fnu)
    codes = torch.ones(2, 4 * GROUP_SIZE, dtype=torch.uint8, device=device)
    out = torch.ops.quanta.dequantize_lut4(
        codes, E2M1_TABLE.to(device), scale, GROUP_SIZE, torch.float32
    )
    nan = out.isnan()
    assert nan[1, 2 * GROUP_SIZE : 3 * GROUP_SIZE].all() and nan.sum() == GROUP_SIZE


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float8_e8m0fnu], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_linear_lut4(device, dtype, scale_dtype, with_bias):
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=device)
    table, scale = E2M1_TABLE.to(device), group_scale(device, scale_dtype, code_magnitude=4)
    input = torch.randn(2, 3, K, device=device, dtype=dtype)
    bias = torch.randn(N, device=device, dtype=dtype) if with_bias else None
    packed = torch.ops.quanta.pack(codes, 4)
    out = torch.ops.quanta.linear_lut4(input, packed, table, scale, GROUP_SIZE, bias)
    assert_linear_close(out, input, table.double()[codes.long()] * expand(scale), bias)


@pytest.mark.parametrize("codes_dtype", [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES, ids=str)
def test_dequantize_grouped(device, codes_dtype, scale_dtype):
    codes = (torch.randn(N, K, device=device) * 20).clamp(-127, 127).to(codes_dtype)
    scale = group_scale(device, scale_dtype)
    out = torch.ops.quanta.dequantize_grouped(codes, scale, GROUP_SIZE, torch.float32)
    torch.testing.assert_close(out.double(), codes.double() * expand(scale), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("codes_dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_linear_grouped(device, dtype, codes_dtype, with_bias):
    codes = (torch.randn(N, K, device=device) * 20).clamp(-127, 127).to(codes_dtype)
    scale = group_scale(device, torch.float8_e8m0fnu, code_magnitude=20)
    input = torch.randn(5, K, device=device, dtype=dtype)
    bias = torch.randn(N, device=device, dtype=dtype) if with_bias else None
    out = torch.ops.quanta.linear_grouped(input, codes, scale, GROUP_SIZE, bias)
    assert_linear_close(out, input, codes.double() * expand(scale), bias)


def test_linear_lut4_gradients_match_the_dequantized_weight(device):
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=device)
    table = torch.randn(16, device=device)
    scale = group_scale(device, torch.float32).requires_grad_()
    input = torch.randn(3, K, device=device, requires_grad=True)
    packed = torch.ops.quanta.pack(codes, 4)
    torch.ops.quanta.linear_lut4(input, packed, table, scale, GROUP_SIZE, None).sum().backward()
    expected_input, expected_scale = input.detach().clone(), scale.detach().clone()
    expected_input.requires_grad_(), expected_scale.requires_grad_()
    weight = table[codes.long()] * expected_scale.repeat_interleave(GROUP_SIZE, dim=1)
    F.linear(expected_input, weight).sum().backward()
    torch.testing.assert_close(input.grad, expected_input.grad)
    torch.testing.assert_close(scale.grad, expected_scale.grad)


def test_lut4_and_grouped_compile_fullgraph(device):
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=device)
    packed, table = torch.ops.quanta.pack(codes, 4), E2M1_TABLE.to(device)
    scale = group_scale(device, torch.float8_e8m0fnu)
    int8_codes = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)

    def both(x):
        lut4 = torch.ops.quanta.linear_lut4(x, packed, table, scale, GROUP_SIZE, None)
        return lut4 + torch.ops.quanta.linear_grouped(x, int8_codes, scale, GROUP_SIZE, None)

    input = torch.randn(3, K, device=device)
    compiled = torch.compile(both, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(input), both(input))
