"""linear_symmetric / linear_affine against an fp64 matmul of the dequantized weight; linear_int8
against the exact product of its int8 codes."""

import pytest
import torch
import torch.nn.functional as F

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rtol, atol) of the output against fp64: the weight is rounded once to the input dtype, and the
# matmul rounds its output once; outputs are O(1) with K = 64 and weights of O(1 / sqrt(K)).
LINEAR_TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
N, K, GROUP_SIZE = 24, 64, 16


def symmetric_weight(device, codes_dtype=torch.int8):
    codes = torch.randint(-127, 128, (N, K), device=device).to(codes_dtype)
    scale = (torch.rand(N, 1, device=device) + 0.5) / (127 * K**0.5)
    return codes, scale


def affine_weight(device, bits):
    codes = torch.randint(0, 2**bits, (N, K), dtype=torch.uint8, device=device)
    scale = (torch.rand(N, K // GROUP_SIZE, device=device) + 0.5) / (2**bits * K**0.5)
    zero_point = torch.randint(0, 2**bits, (N, K // GROUP_SIZE), dtype=torch.uint8, device=device)
    packed = torch.ops.quanta.pack(codes, bits)
    weight = (codes.double() - zero_point.double().repeat_interleave(GROUP_SIZE, 1)) * (
        scale.double().repeat_interleave(GROUP_SIZE, 1)
    )
    return packed, scale, zero_point, weight


def assert_linear_close(out, input, weight, bias):
    expected = F.linear(input.double(), weight, None if bias is None else bias.double())
    rtol, atol = LINEAR_TOLERANCE[input.dtype]
    assert out.dtype == input.dtype and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("leading", [(1,), (5,), (2, 3)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_linear_symmetric(device, dtype, leading, with_bias):
    codes, scale = symmetric_weight(device)
    input = torch.randn(*leading, K, device=device, dtype=dtype)
    bias = torch.randn(N, device=device, dtype=dtype) if with_bias else None
    out = torch.ops.quanta.linear_symmetric(input, codes, scale, bias)
    assert_linear_close(out, input, codes.double() * scale.double(), bias)


@pytest.mark.parametrize("codes_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_linear_symmetric_float8(device, codes_dtype):
    codes, scale = symmetric_weight(device, codes_dtype)
    input = torch.randn(3, K, device=device)
    out = torch.ops.quanta.linear_symmetric(input, codes, scale, None)
    assert_linear_close(out, input, codes.double() * scale.double(), None)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("leading", [(1,), (2, 3)], ids=str)
def test_linear_affine(device, dtype, bits, leading):
    packed, scale, zero_point, weight = affine_weight(device, bits)
    input = torch.randn(*leading, K, device=device, dtype=dtype)
    bias = torch.randn(N, device=device, dtype=dtype)
    out = torch.ops.quanta.linear_affine(input, packed, scale, zero_point, bits, GROUP_SIZE, bias)
    assert_linear_close(out, input, weight, bias)


def test_linear_affine_float_zero_point_and_odd_k(device):
    k, bits, group_size = 30, 4, 10  # K not a multiple of 8 // bits: the last byte is half used
    codes = torch.randint(0, 16, (N, k), dtype=torch.uint8, device=device)
    scale = torch.rand(N, k // group_size, device=device) / 16
    zero_point = torch.rand(N, k // group_size, device=device) * 15
    packed = torch.ops.quanta.pack(codes, bits)
    input = torch.randn(4, k, device=device)
    out = torch.ops.quanta.linear_affine(input, packed, scale, zero_point, bits, group_size, None)
    weight = (codes.double() - zero_point.double().repeat_interleave(group_size, 1)) * (
        scale.double().repeat_interleave(group_size, 1)
    )
    assert_linear_close(out, input, weight, None)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_linear_empty_batch_under_inference_mode(device, dtype):
    codes, scale = symmetric_weight(device)
    packed, affine_scale, zero_point, _ = affine_weight(device, 4)
    input = torch.randn(0, K, device=device, dtype=dtype)
    with torch.inference_mode():
        out_symmetric = torch.ops.quanta.linear_symmetric(input, codes, scale, None)
        out_affine = torch.ops.quanta.linear_affine(
            input, packed, affine_scale, zero_point, 4, GROUP_SIZE, None
        )
    assert out_symmetric.shape == out_affine.shape == (0, N)
    assert out_symmetric.dtype == out_affine.dtype == dtype


def test_linear_gradients_match_float_linear(device):
    """Backward: input, bias, scale and float zero_point get the gradients of the float layer."""
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=device)
    packed = torch.ops.quanta.pack(codes, 4)
    scale = (torch.rand(N, K // GROUP_SIZE, device=device) / 16).requires_grad_()
    zero_point = (torch.rand(N, K // GROUP_SIZE, device=device) * 15).requires_grad_()
    bias = torch.randn(N, device=device, requires_grad=True)
    input = torch.randn(2, 3, K, device=device, requires_grad=True)
    leaves = (input, scale, zero_point, bias)

    out = torch.ops.quanta.linear_affine(input, packed, scale, zero_point, 4, GROUP_SIZE, bias)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad_out)
    weight = (codes.float() - zero_point.repeat_interleave(GROUP_SIZE, 1)) * (
        scale.repeat_interleave(GROUP_SIZE, 1)
    )
    expected = torch.autograd.grad(F.linear(input, weight, bias), leaves, grad_out)
    for name, a, b in zip(("input", "scale", "zero_point", "bias"), got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")

    int8_codes = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
    sym_scale = (torch.rand(N, 1, device=device) / 127).requires_grad_()
    leaves = (input, sym_scale, bias)
    out = torch.ops.quanta.linear_symmetric(input, int8_codes, sym_scale, bias)
    got = torch.autograd.grad(out, leaves, grad_out)
    expected = torch.autograd.grad(
        F.linear(input, int8_codes.float() * sym_scale, bias), leaves, grad_out
    )
    for name, a, b in zip(("input", "scale", "bias"), got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")


# Importing inductor imports torch.utils.mkldnn, which warns about its own use of torch.jit.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_through_linear_ops(device):
    codes, scale = symmetric_weight(device)
    packed, affine_scale, zero_point, _ = affine_weight(device, 4)
    bias = torch.randn(N, device=device)

    def block(x):
        hidden = torch.ops.quanta.linear_symmetric(x, codes, scale, bias).relu()
        hidden = torch.cat([hidden, hidden, hidden[..., : K - 2 * N]], dim=-1)
        return torch.ops.quanta.linear_affine(
            hidden, packed, affine_scale, zero_point, 4, GROUP_SIZE, None
        )

    compiled = torch.compile(block, fullgraph=True, dynamic=True)
    for rows in (3, 5):
        x = torch.randn(rows, K, device=device)
        torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)


def int8_activations(device, leading, k, per_row):
    """int8 codes [*leading, k] and their scale: one per row, or one for the whole tensor."""
    codes = torch.randint(-128, 128, (*leading, k), dtype=torch.int8, device=device)
    shape = (*leading, 1) if per_row else ()
    return codes, (torch.rand(shape, device=device) + 0.5) / 127


@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, torch.float64], ids=str)
@pytest.mark.parametrize("per_row", [False, True], ids=["per_tensor", "per_row"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_linear_int8(device, dtype, per_row, with_bias):
    # K = 3000: the int8 products sum past 2**24, where an fp32 sum would no longer be exact.
    k = 3000
    input, input_scale = int8_activations(device, (2, 3), k, per_row)
    codes = torch.full((N, k), 127, dtype=torch.int8, device=device)
    codes[1:] = torch.randint(-128, 128, (N - 1, k), dtype=torch.int8, device=device)
    input[0, 0] = 127  # row 0 times weight row 0: 3000 * 127 * 127 > 2**24
    scale = (torch.rand(N, 1, device=device) + 0.5) / (127 * k**0.5)  # outputs of O(1)
    bias = torch.randn(N, device=device) if with_bias else None
    out = torch.ops.quanta.linear_int8(input, input_scale, codes, scale, bias, dtype)
    exact = input.double() @ codes.double().t()
    expected = (exact * input_scale.double() * scale.double().t()).float()
    if bias is not None:
        expected = expected + bias
    assert out.dtype == dtype and out.shape == (2, 3, N)
    # the int32 sum is exact: only the fp32 scaling and the final cast round
    rtol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(out.double(), expected.double(), rtol=rtol, atol=rtol)
