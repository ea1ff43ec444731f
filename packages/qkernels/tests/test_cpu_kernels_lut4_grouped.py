"""The native CPU linear_lut4 and linear_grouped kernels against the reference, under every
instruction-set path this processor runs (see test_cpu_kernels.py): decode (<= 16 rows) and
prefill, float32 / bfloat16 / float16 activations, every scale dtype, odd N and K, biases, and
NaN in (scale or activation) giving NaN out where the reference has it."""

import itertools

import pytest
import torch
from test_cpu_kernels import FLOAT_DTYPES, N, assert_matches_reference, cpu_isa  # noqa: F401
from test_ops_lut4_grouped import SCALE_DTYPES

import quanta.qkernels
from quanta.qkernels import reference

ROWS = [1, 3, 17, 64]
# nf4 (bitsandbytes' table, ascending) and e2m1 in code order (fp4, MXFP4, NVFP4)
NF4_TABLE = torch.tensor(
    [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
     0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]
)  # fmt: skip
E2M1_TABLE = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def group_scale(groups, k, code_magnitude, dtype):
    """Scales giving weights of O(1 / sqrt(k)), rounded to dtype (e8m0: a power of two)."""
    return ((torch.rand(N, groups) + 0.5) / (code_magnitude * k**0.5)).to(dtype)


def cases(*weights):
    """Every scale dtype once, with the activation dtypes and the given weights in turn (the
    full product would take a minute)."""
    cycle = itertools.cycle
    return zip(cycle(weights), cycle(FLOAT_DTYPES), SCALE_DTYPES, strict=False)


def reference_out(op, input, *args):
    """The reference for float64 activations: the weight is dequantized to float64 too."""
    return getattr(reference, op)(input.double(), *args)


# (group_size, groups): 16 fills AVX2's vector loop but is all tail on AVX-512; 64 takes the
# AVX-512 lookup decode, the AVX512-BF16 dot-product decode and its dequantizer; 24 leaves a tail
# on every path.
@pytest.mark.parametrize("group_size, groups", [(16, 13), (64, 3), (24, 5)])
@pytest.mark.parametrize("rows", ROWS)
def test_linear_lut4(cpu_isa, group_size, groups, rows):  # noqa: F811
    k = group_size * groups
    packed = torch.ops.quanta.pack(torch.randint(0, 16, (N, k), dtype=torch.uint8), 4)
    for table, dtype, scale_dtype in cases(NF4_TABLE, E2M1_TABLE):
        scale = group_scale(groups, k, table.abs().max() / 2, scale_dtype)
        input = torch.randn(rows, k, dtype=dtype)
        bias = torch.randn(N, dtype=dtype)
        out = torch.ops.quanta.linear_lut4(input, packed, table, scale, group_size, bias)
        expected = reference_out(
            "linear_lut4", input, packed, table, scale, group_size, bias.double()
        )
        assert_matches_reference(out, expected, dtype)


@pytest.mark.parametrize("group_size, groups", [(32, 3), (24, 5)])
@pytest.mark.parametrize("rows", ROWS)
def test_linear_grouped(cpu_isa, group_size, groups, rows):  # noqa: F811
    k = group_size * groups
    for codes_dtype, dtype, scale_dtype in cases(
        torch.int8, torch.float8_e4m3fn, torch.float8_e5m2
    ):
        codes = (torch.randn(N, k) * 40).clamp(-127, 127).to(codes_dtype)
        scale = group_scale(groups, k, 40, scale_dtype)
        input = torch.randn(rows, k, dtype=dtype)
        bias = torch.randn(N, dtype=dtype) if scale_dtype != torch.float32 else None
        out = torch.ops.quanta.linear_grouped(input, codes, scale, group_size, bias)
        expected = reference_out(
            "linear_grouped",
            input,
            codes,
            scale,
            group_size,
            None if bias is None else bias.double(),
        )
        assert_matches_reference(out, expected, dtype)


@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_nan_scale_or_input_gives_nan_where_the_reference_does(cpu_isa, rows, dtype):  # noqa: F811
    k, group_size = 128, 32
    packed = torch.ops.quanta.pack(torch.randint(0, 16, (N, k), dtype=torch.uint8), 4)
    e8m0 = torch.full((N, k // group_size), 127, dtype=torch.uint8)
    e8m0[5, 2] = 0xFF  # NaN: column 5 of every row
    scale = e8m0.view(torch.float8_e8m0fnu)
    int8_codes = torch.randint(-127, 128, (N, k), dtype=torch.int8)
    input = torch.randn(rows, k, dtype=dtype)
    input[0, 77] = float("nan")  # every column of row 0
    for op, args in (
        ("linear_lut4", (packed, E2M1_TABLE, scale, group_size, None)),
        ("linear_grouped", (int8_codes, scale, group_size, None)),
    ):
        out = getattr(torch.ops.quanta, op)(input, *args)
        expected = reference_out(op, input, *args)
        assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().sum() == N + rows - 1


@pytest.mark.parametrize("rows", [17, 256])
def test_bf16_dequantizer_of_lut4_equals_the_generic_one(monkeypatch, rows):
    """avx512_bf16's bfloat16 dequantizer of table codes (prefill) equals the generic avx512 one."""
    monkeypatch.setenv("QUANTA_CPU_ISA", "avx512_bf16")
    if quanta.qkernels.cpu_isa() != "avx512_bf16":
        pytest.skip("this processor has no avx512_bf16")
    torch.manual_seed(0)
    k, group_size = 32 * 17, 32
    packed = torch.ops.quanta.pack(torch.randint(0, 16, (N, k), dtype=torch.uint8), 4)
    scale = group_scale(17, k, 1, torch.float8_e8m0fnu)
    x = torch.randn(rows, k, dtype=torch.bfloat16)
    outputs = []
    for isa in ("avx512_bf16", "avx512"):
        monkeypatch.setenv("QUANTA_CPU_ISA", isa)
        outputs.append(torch.ops.quanta.linear_lut4(x, packed, NF4_TABLE, scale, group_size, None))
    assert torch.equal(*outputs)
