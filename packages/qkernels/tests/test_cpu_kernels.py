"""The native CPU kernels against the reference: the linear kernels under every instruction-set
path, and quantize / dequantize / linear_int8.

Sizes are odd on purpose: N and K not multiples of 16 or 64, groups whose codes do not fill the
vector loop (tails), 2-bit groups that do not start on a byte, and M on both sides of the decode /
prefill switch (16 rows).
"""

import itertools

import pytest
import torch

import quanta.qkernels
from quanta.qkernels import reference

ISAS = ["amx", "avx512_bf16", "avx512", "avx2", "portable"]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The kernels read scales, zero points and biases in the dtype they are stored in.
PARAM_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
ROWS = [1, 3, 17, 256]  # decode (<= 16 rows) and prefill
N = 37
# (rtol, atol) against the reference evaluated in float64. Outputs are O(1) (weights of
# O(1 / sqrt(K))); the error is the output's rounding to its dtype, plus, on the prefill path,
# the weight's rounding to the input dtype (bf16: 2^-9 relative), summed over K random terms.
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


@pytest.fixture(params=ISAS)
def cpu_isa(request, monkeypatch) -> str:
    """Run the test with QUANTA_CPU_ISA forcing one path; skip paths the processor lacks."""
    monkeypatch.setenv("QUANTA_CPU_ISA", request.param)
    if quanta.qkernels.cpu_isa() != request.param:
        pytest.skip(f"this processor has no {request.param}")
    torch.manual_seed(0)
    return request.param


def assert_matches_reference(out, expected, dtype):
    rtol, atol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=rtol, atol=atol)


def symmetric_codes(codes_dtype, k):
    if codes_dtype == torch.int8:
        return torch.randint(-127, 128, (N, k), dtype=torch.int8)
    return (torch.randn(N, k) * 64).to(codes_dtype)  # every exponent, subnormals included


@pytest.mark.parametrize(
    "codes_dtype", [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2], ids=str
)
@pytest.mark.parametrize("rows", ROWS)
def test_linear_symmetric(cpu_isa, codes_dtype, rows):
    k = 211
    codes = symmetric_codes(codes_dtype, k)
    amax = codes.float().abs().amax(dim=1, keepdim=True)
    for dtype, param_dtype in itertools.product(FLOAT_DTYPES, PARAM_DTYPES):
        scale = ((torch.rand(N, 1) + 0.5) / (amax * k**0.5)).to(param_dtype)
        input = torch.randn(rows, k, dtype=dtype)
        bias = torch.randn(N, dtype=param_dtype)
        out = torch.ops.quanta.linear_symmetric(input, codes, scale, bias)
        expected = reference.linear_symmetric(input.double(), codes, scale.double(), bias.double())
        assert_matches_reference(out, expected, dtype)


@pytest.mark.parametrize("rows", [1, 17])
def test_float16_subnormal_scales(cpu_isa, rows):
    # int8 weights of magnitude ~1e-3 have scales below float16's smallest normal (6.1e-5)
    k = 96
    codes = symmetric_codes(torch.int8, k)
    scale = torch.logspace(-7, -4, N).to(torch.float16).unsqueeze(1)
    assert (scale < 6.1e-5).any()
    input = torch.randn(rows, k)
    out = torch.ops.quanta.linear_symmetric(input, codes, scale, None)
    expected = reference.linear_symmetric(input.double(), codes, scale.double(), None)
    # per output column, relative to its scale (sums of ~10 terms of ~100 each)
    per_scale = scale.double().T
    torch.testing.assert_close(out.double() / per_scale, expected / per_scale, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("bits", [4, 2])
# (group_size, groups): 17 groups of 64 run the AVX512-BF16 path's 16-group step and its tail;
# 130 groups, the decode kernels' blocks of 64 groups' scales and zeros and their tail
@pytest.mark.parametrize(
    "group_size, groups", [(32, 3), (32, 130), (64, 3), (64, 17), (128, 3), (24, 3), (10, 3)]
)
@pytest.mark.parametrize("rows", ROWS)
def test_linear_affine(cpu_isa, bits, group_size, groups, rows):
    k = group_size * groups
    codes = torch.randint(0, 2**bits, (N, k), dtype=torch.uint8)
    packed = torch.ops.quanta.pack(codes, bits)
    for dtype, param_dtype in itertools.product(FLOAT_DTYPES, PARAM_DTYPES):
        scale = ((torch.rand(N, groups) + 0.5) / (2**bits * k**0.5)).to(param_dtype)
        zero_points = {
            "uint8": torch.randint(0, 2**bits, (N, groups), dtype=torch.uint8),
            "float": (torch.rand(N, groups) * (2**bits - 1)).to(param_dtype),
        }
        for zero_point in zero_points.values():
            input = torch.randn(rows, k, dtype=dtype)
            bias = torch.randn(N, dtype=param_dtype)
            args = (packed, scale, zero_point, bits, group_size)
            out = torch.ops.quanta.linear_affine(input, *args, bias)
            expected = reference.linear_affine(
                input.double(), packed, scale.double(), zero_point, bits, group_size, bias.double()
            )
            assert_matches_reference(out, expected, dtype)


@pytest.mark.parametrize("k", [2048, 2050])  # 2050: rows padded to whole 32-value tile steps
def test_prefill_of_many_panels_and_weight_blocks(cpu_isa, k):
    # AMX: x in panels of at most 1 MiB packed (here 224-256 rows, 3 panels), each multiplied
    # by every 32-row weight block (4 of them, the last one partial)
    rows, n = 600, 100
    codes = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scale = (torch.rand(n, 1) + 0.5) / (127 * k**0.5)
    input = torch.randn(rows, k, dtype=torch.bfloat16)
    bias = torch.randn(n, dtype=torch.bfloat16)
    out = torch.ops.quanta.linear_symmetric(input, codes, scale, bias)
    expected = reference.linear_symmetric(input.double(), codes, scale.double(), bias.double())
    assert_matches_reference(out, expected, torch.bfloat16)
    packed = torch.ops.quanta.pack(torch.randint(0, 16, (n, 2048), dtype=torch.uint8), 4)
    args = (packed, scale.expand(n, 16) * 8, torch.full((n, 16), 8, dtype=torch.uint8), 4, 128)
    out = torch.ops.quanta.linear_affine(input[:, :2048], *args, None)
    expected = reference.linear_affine(input[:, :2048].double(), *args, None)
    assert_matches_reference(out, expected, torch.bfloat16)


@pytest.mark.parametrize("group_size, k", [(128, 8448), (24, 8448), (None, 8450)])
def test_prefill_of_k_in_chunks(cpu_isa, group_size, k):
    # AMX: k above 8192 packs to more than 1 MiB per 128 rows, so k is taken in chunks of whole
    # groups (126-128 steps of 32 values, then the rest), the accumulators kept between chunks.
    # None: int8 weights, one scale a row, k not a multiple of 32.
    rows, n = 200, 40
    input = torch.randn(rows, k, dtype=torch.bfloat16)
    if group_size is None:
        codes = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        scale = (torch.rand(n, 1) + 0.5) / (127 * k**0.5)
        out = torch.ops.quanta.linear_symmetric(input, codes, scale, None)
        expected = reference.linear_symmetric(input.double(), codes, scale.double(), None)
    else:
        groups = k // group_size
        packed = torch.ops.quanta.pack(torch.randint(0, 16, (n, k), dtype=torch.uint8), 4)
        scale = (torch.rand(n, groups) + 0.5) / (16 * k**0.5)
        zero = torch.randint(0, 16, (n, groups), dtype=torch.uint8)
        args = (packed, scale, zero, 4, group_size, None)
        out = torch.ops.quanta.linear_affine(input, *args)
        expected = reference.linear_affine(input.double(), *args)
    assert_matches_reference(out, expected, torch.bfloat16)


@pytest.mark.parametrize("rows", [17, 256])
def test_bf16_dequantizer_equals_the_generic_one(monkeypatch, rows):
    """avx512_bf16's own bfloat16 dequantizer (4-bit, int8 and float8 weights, prefill path) gives
    the outputs of the generic one (avx512) bit for bit; other group sizes fall back to it."""
    monkeypatch.setenv("QUANTA_CPU_ISA", "avx512_bf16")
    if quanta.qkernels.cpu_isa() != "avx512_bf16":
        pytest.skip("this processor has no avx512_bf16")
    torch.manual_seed(0)

    def on_both_isas(op, *args):
        outputs = []
        for isa in ("avx512_bf16", "avx512"):
            monkeypatch.setenv("QUANTA_CPU_ISA", isa)
            outputs.append(op(*args))
        return outputs

    for group_size, param_dtype in itertools.product([32, 128, 24], PARAM_DTYPES[:3]):
        k = group_size * 17
        packed = torch.ops.quanta.pack(torch.randint(0, 16, (N, k), dtype=torch.uint8), 4)
        scale = ((torch.rand(N, 17) + 0.5) / (16 * k**0.5)).to(param_dtype)
        for zero in (torch.randint(0, 16, (N, 17), dtype=torch.uint8), scale * 7):
            x = torch.randn(rows, k, dtype=torch.bfloat16)
            args = (x, packed, scale, zero, 4, group_size, None)
            fast, generic = on_both_isas(torch.ops.quanta.linear_affine, *args)
            assert torch.equal(fast, generic)
    codes_dtypes = [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2]
    for k, codes_dtype, param_dtype in itertools.product(
        [256, 211], codes_dtypes, PARAM_DTYPES[:3]
    ):
        codes = symmetric_codes(codes_dtype, k)
        scale = ((torch.rand(N, 1) + 0.5) / (127 * k**0.5)).to(param_dtype)
        x, bias = torch.randn(rows, k, dtype=torch.bfloat16), torch.randn(N, dtype=param_dtype)
        fast, generic = on_both_isas(torch.ops.quanta.linear_symmetric, x, codes, scale, bias)
        assert torch.equal(fast, generic)


# NaN bit patterns that a rounding done on the bits alone turns into numbers: all ones (float32
# 0xFFFFFFFF rounds up to bfloat16 +0) and the smallest signaling NaN (0x7F800001 truncates to
# +inf), for each float dtype.
NAN_BITS = {
    torch.float32: (0xFFFFFFFF, 0x7F800001),
    torch.bfloat16: (0xFFFF, 0x7F81),
    torch.float16: (0xFFFF, 0x7C01),
}
BITS_DTYPE = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def nans(dtype):
    """A NaN of each pattern of NAN_BITS[dtype], as a tensor of dtype."""
    width = 8 * dtype.itemsize
    signed = [b - (1 << width) if b >> (width - 1) else b for b in NAN_BITS[dtype]]
    return torch.tensor(signed, dtype=BITS_DTYPE[dtype]).view(dtype)


@pytest.mark.parametrize("weights", ["int8", "float8_e4m3fn", "uint4"])
@pytest.mark.parametrize("rows", [1, 3, 40])  # decode and prefill
def test_nan_and_inf_stay_nan_and_inf(cpu_isa, weights, rows):
    """NaN and +-Inf in the scales (so in the weights), the bias and the activations come out as
    NaN and +-Inf in every output dtype, where the reference has them, on every path (the
    decode of affine weights, which takes the zero point out of its sums, included)."""
    k, group_size = 128, 64  # whole 64-code groups: the AVX512-BF16 decode of 4-bit weights too
    nan = nans(torch.float32)
    scale = (torch.rand(N, k // group_size) + 0.5) / (127 * k**0.5)
    scale[:2] = nan.unsqueeze(1)  # weight rows 0 and 1: every value NaN
    bias = torch.randn(N)
    bias[2:5] = torch.tensor([float("inf"), -float("inf"), nan[0]])
    if weights == "uint4":
        codes = torch.randint(0, 16, (N, k), dtype=torch.uint8)
        zero = torch.randint(0, 16, (N, k // group_size), dtype=torch.uint8)
        args = (torch.ops.quanta.pack(codes, 4), scale, zero, 4, group_size, bias)
        op, reference_op = torch.ops.quanta.linear_affine, reference.linear_affine
    else:
        codes = symmetric_codes(getattr(torch, weights), k)
        args = (codes, scale[:, :1], bias)
        op, reference_op = torch.ops.quanta.linear_symmetric, reference.linear_symmetric
    for dtype in FLOAT_DTYPES:
        input = torch.randn(rows, k, dtype=dtype)
        input[1:3, 7] = nans(dtype)[: rows - 1]  # activation rows 1 and 2: NaN
        input[0, 9] = float("inf")  # row 0: +-inf, or NaN where a weight is 0 (inf * 0)
        input[rows - 1, 11] = -float("inf")
        out = op(input, *args)
        expected = reference_op(input, *args)
        assert out.dtype == dtype
        assert expected.isnan().any() and expected.isinf().any()
        assert torch.equal(out.isnan(), expected.isnan())
        inf = expected.isinf()
        assert torch.equal(out.isinf(), inf)
        assert torch.equal(out[inf], expected[inf])


@pytest.mark.parametrize("rows", [1, 3, 40])  # decode and prefill
def test_float8_e4m3_nan_codes_read_as_nan(cpu_isa, rows):
    """The e4m3fn NaN codes S.1111.111 (0x7F, 0xFF) are NaN on every path (the vector decoders
    read the codes as halves, where these bits are 480): the output columns they reach are NaN,
    the others equal the reference."""
    k = 211
    codes = symmetric_codes(torch.float8_e4m3fn, k)
    codes.view(torch.uint8)[3, 5] = 0x7F
    codes.view(torch.uint8)[8, 200] = 0xFF  # in the scalar tail of the vector loop
    codes.view(torch.uint8)[9, 16] = 0x7E  # 448, the largest number, next to the NaN code
    scale = (torch.rand(N, 1) + 0.5) / (448 * k**0.5)
    for dtype in FLOAT_DTYPES:
        input = torch.randn(rows, k, dtype=dtype)
        out = torch.ops.quanta.linear_symmetric(input, codes, scale, None)
        expected = reference.linear_symmetric(input.double(), codes, scale.double(), None)
        assert out.isnan().any(dim=0).tolist() == [n in (3, 8) for n in range(N)]
        numbers = [n not in (3, 8) for n in range(N)]
        assert_matches_reference(out[:, numbers], expected[:, numbers], dtype)


@pytest.mark.parametrize("rows", [1, 17])
def test_opcheck_linear_ops(cpu_isa, rows):
    k, group_size = 96, 32
    input = torch.randn(rows, k)
    codes = symmetric_codes(torch.int8, k)
    scale = torch.rand(N, 1) / 127
    packed = torch.ops.quanta.pack(torch.randint(0, 16, (N, k), dtype=torch.uint8), 4)
    group_scale = torch.rand(N, k // group_size) / 16
    zero_point = torch.randint(0, 16, (N, k // group_size), dtype=torch.uint8)
    torch.library.opcheck(torch.ops.quanta.linear_symmetric.default, (input, codes, scale, None))
    torch.library.opcheck(
        torch.ops.quanta.linear_affine.default,
        (input, packed, group_scale, zero_point, 4, group_size, None),
    )


@pytest.mark.parametrize("rows", ROWS)
def test_linear_int8(cpu_isa, rows):
    """The native W8A8 op (the VNNI decode kernel or oneDNN's int8 product, then the scaling)
    equals the reference exactly."""
    torch.manual_seed(rows)
    k = 1211
    input = torch.randint(-128, 128, (rows, k), dtype=torch.int8)
    codes = torch.randint(-128, 128, (N, k), dtype=torch.int8)
    scale, bias = torch.rand(N, 1) / 127, torch.randn(N)
    row_scales = torch.rand(rows, 1, dtype=torch.bfloat16)
    row_scales[rows // 2] = float("nan")  # a dynamic row that held a NaN
    row_scales[-1] = float("inf")  # one that held an infinity: its codes are 0, its outputs NaN
    input[-1] = 0
    for input_scale in (row_scales, torch.tensor(0.01), torch.tensor(float("nan"))):
        for dtype in (*FLOAT_DTYPES, torch.float64):
            args = (input, input_scale, codes, scale, bias, dtype)
            out = torch.ops.quanta.linear_int8(*args)
            assert same_values(out, reference.linear_int8(*args))
    assert out.isnan().all()
    # (opcheck compares outputs without equal_nan: a finite case)
    args = (input, torch.tensor(0.01), codes, scale, bias, torch.bfloat16)
    torch.library.opcheck(torch.ops.quanta.linear_int8.default, args)


CODE_DTYPES = [
    torch.int8,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
]
# (input shape, scale shape): per tensor, per row, per column, per element, broadcast over a
# middle dimension, a 0-d input, an empty one
BROADCASTS = [
    ((5, 7), ()),
    ((5, 7), (5, 1)),
    ((5, 7), (1, 7)),
    ((5, 7), (5, 7)),
    ((2, 3, 4), (3, 1)),
    ((2, 3, 4), (2, 1, 1)),
    ((), ()),
    ((0, 4), (0, 1)),
]


def same_values(a, b):
    """Equal dtype, shape and values, a NaN where the other has one (of any sign or payload)."""
    assert a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    return True


def same_bits(a, b):
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
    )


@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("codes_dtype", CODE_DTYPES, ids=str)
def test_quantize_and_dequantize_symmetric(shapes, codes_dtype):
    """The native quantize/dequantize give the reference's bits for every broadcast and dtype,
    round half to even, clamp, and keep NaN (float8)."""
    input_shape, scale_shape = shapes
    for dtype in (*FLOAT_DTYPES, torch.float64):
        input = torch.randn(input_shape, dtype=dtype) * 300
        scale = (torch.rand(scale_shape) + 0.05).to(torch.bfloat16)
        codes = torch.ops.quanta.quantize_symmetric(input, scale, codes_dtype)
        assert same_bits(codes, reference.quantize_symmetric(input, scale, codes_dtype))
        values = torch.ops.quanta.dequantize_symmetric(codes, scale, dtype)
        assert same_bits(values, reference.dequantize_symmetric(codes, scale, dtype))
    inf = float("inf")
    ties = torch.tensor([0.5, 1.5, 2.5, -2.5, 127.5, -128.5, 1e4, inf, -inf, float("nan")])
    codes = torch.ops.quanta.quantize_symmetric(ties, torch.tensor(1.0), codes_dtype)
    assert same_bits(codes, reference.quantize_symmetric(ties, torch.tensor(1.0), codes_dtype))
    if codes_dtype == torch.int8:  # infinities saturate; NaN, which int8 cannot hold, is 0
        assert codes[-3:].tolist() == [127, -128, 0]


@pytest.mark.parametrize("shape", [(5, 37), (2, 5, 211), (4, 0), (0, 8)], ids=str)
@pytest.mark.parametrize("codes_dtype", CODE_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, torch.float64], ids=str)
def test_quantize_dynamic(cpu_isa, shape, codes_dtype, dtype):
    """Scales and codes equal the reference's exactly, with rows of zeros, NaN and infinities;
    the rows holding a NaN or an infinity dequantize to NaN (their scale is NaN or Inf)."""
    input = (torch.randn(shape) * 10).to(dtype)
    special = input.numel() >= 5 * 37
    if special:
        rows = input.view(-1, shape[-1])
        rows[0] = 0
        rows[1, 3] = float("nan")
        rows[2, 5] = float("-inf")
        rows[3, :] = torch.finfo(dtype).tiny / 4  # scales below the smallest normal
    codes, scale = torch.ops.quanta.quantize_dynamic(input, codes_dtype)
    expected_codes, expected_scale = reference.quantize_dynamic(input, codes_dtype)
    assert scale.dtype == dtype and scale.shape == (*shape[:-1], 1)
    assert same_values(scale, expected_scale)
    assert same_values(codes.float(), expected_codes.float())  # NaN codes of either sign
    if special:
        values = torch.ops.quanta.dequantize_symmetric(codes, scale, dtype).view(-1, shape[-1])
        assert values[1:3].isnan().all() and not values[3:].isnan().any()
        assert scale.view(-1)[1].isnan() and scale.view(-1)[2] == float("inf")


@pytest.mark.parametrize("rows, dtype", [(3, torch.float32), (100, torch.bfloat16)])
def test_results_do_not_depend_on_the_thread_count(rows, dtype):
    input = torch.randn(rows, 256, dtype=dtype)
    codes = symmetric_codes(torch.int8, 256)
    scale = torch.rand(N, 1) / 127
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.quanta.linear_symmetric(input, codes, scale, None)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, torch.ops.quanta.linear_symmetric(input, codes, scale, None))


def test_cpu_isa_can_only_be_lowered(monkeypatch):
    best = quanta.qkernels.cpu_isa()
    assert best in ISAS
    monkeypatch.setenv("QUANTA_CPU_ISA", "portable")
    assert quanta.qkernels.cpu_isa() == "portable"
    monkeypatch.setenv("QUANTA_CPU_ISA", ISAS[0])
    assert quanta.qkernels.cpu_isa() == best  # a wider set than the processor has is not used
    monkeypatch.setenv("QUANTA_CPU_ISA", "sse")
    with pytest.raises(RuntimeError, match=r"QUANTA_CPU_ISA must be one of \(portable, avx2"):
        quanta.qkernels.cpu_isa()
