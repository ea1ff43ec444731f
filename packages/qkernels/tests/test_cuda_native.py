"""The native CUDA decode kernels (torch.ops.quanta_cuda.*, csrc/cuda/linear_decode*) on a GPU:
every op against an fp64 matmul of the reference's dequantized weight, on fresh random inputs
with odd shapes, 1 to 16 input rows, every input, scale and zero point dtype and a bias; CUDA-graph
capture and replay; the current stream; the checks. Skipped without CUDA or without the ops."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from test_cpu_kernels import TOLERANCE
from test_cuda_decode_math import make_weight
from test_ops_lut4_grouped import SCALE_DTYPES

import quanta.qkernels  # noqa: F401  (loads _C_cuda with a CUDA build of torch)


def native_ops_loaded() -> bool:
    try:
        torch.ops.quanta_cuda.linear_affine  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not native_ops_loaded(), reason="quanta's _C_cuda library is not loaded"),
]

FLOAT_DTYPES = list(TOLERANCE)
ROWS = [1, 2, 7, 16]
# (N, K, group_size): whole 16-byte chunks and steps; more chunks than a warp has lanes; odd K
# (rows not 16-byte aligned, a half-used last byte) with groups that split the 8-code steps;
# N not a multiple of the 16 columns of a block; a Llama-like K.
SHAPES = [(37, 64, 16), (24, 1088, 64), (13, 45, 15), (9, 30, 10), (50, 4096, 128)]


def to_cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


def expected_out(input, weight, bias):
    """input @ weightᵀ + bias in fp64, the bias rounded to the input dtype first (as the
    reference adds it)."""
    bias = None if bias is None else bias.to(input.dtype).double()
    return F.linear(input.double(), weight.double().to(input.device), bias)


def assert_close(out, input, weight, bias, case=""):
    expected = expected_out(input, weight, bias)
    rtol, atol = TOLERANCE[input.dtype]
    assert out.dtype == input.dtype and out.shape == expected.shape, case
    torch.testing.assert_close(
        out.double(), expected, rtol=rtol, atol=atol, msg=lambda text: f"{case}: {text}"
    )


def inputs(rows, k, dtype, n, bias_dtype):
    input = torch.randn(rows, k, device="cuda").to(dtype)
    bias = None if bias_dtype is None else torch.randn(n, device="cuda").to(bias_dtype)
    return input, bias


CODE_DTYPES = ["int8", "float8_e4m3fn", "float8_e5m2"]
# (bits, scale dtype, zero point dtype) of the affine weights
AFFINE_WEIGHTS = [
    (4, torch.float32, torch.uint8),
    (4, torch.bfloat16, torch.bfloat16),
    (4, torch.float16, torch.float32),
    (2, torch.float32, torch.float16),
    (2, torch.bfloat16, torch.uint8),
]
# Each test takes a shape and a row count, and runs every input dtype with every weight dtype
# in turn (a parametrization of the full product would collect thousands of tests everywhere).
shapes_and_rows = pytest.mark.parametrize(
    "shape, rows", list(itertools.product(SHAPES, ROWS)), ids=str
)


@shapes_and_rows
def test_linear_affine(shape, rows):
    torch.manual_seed(0)
    n, k, group_size = shape
    for dtype, (bits, scale_dtype, zero_dtype) in itertools.product(FLOAT_DTYPES, AFFINE_WEIGHTS):
        format = "uint4" if bits == 4 else "uint2"
        packed, scale, zero, _, weight = make_weight(format, *shape, scale_dtype, zero_dtype)
        packed, scale, zero = to_cuda(packed, scale, zero)
        input, bias = inputs(rows, k, dtype, n, torch.float32 if bits == 4 else None)
        out = torch.ops.quanta_cuda.linear_affine(
            input, packed, scale, zero, bits, group_size, bias
        )
        assert_close(out, input, weight, bias, f"{dtype} {bits} bits {scale_dtype} {zero_dtype}")


@shapes_and_rows
def test_linear_symmetric(shape, rows):
    torch.manual_seed(1)
    n, k, _ = shape
    weights = itertools.product(CODE_DTYPES, [torch.float32, torch.bfloat16, torch.float16])
    for dtype, (codes_dtype, scale_dtype) in itertools.product(FLOAT_DTYPES, weights):
        codes, scale, _, _, weight = make_weight(
            codes_dtype, n, k, k, scale_dtype, every_byte=False
        )
        codes, scale = to_cuda(codes.view(getattr(torch, codes_dtype)), scale)
        input, bias = inputs(rows, k, dtype, n, dtype)
        out = torch.ops.quanta_cuda.linear_symmetric(input, codes, scale, bias)
        assert_close(out, input, weight, bias, f"{dtype} {codes_dtype} {scale_dtype}")


@shapes_and_rows
def test_linear_lut4(shape, rows):
    torch.manual_seed(2)
    n, k, group_size = shape
    for dtype, scale_dtype in itertools.product(FLOAT_DTYPES, SCALE_DTYPES):
        packed, scale, _, table, weight = make_weight("lut4", *shape, scale_dtype)
        packed, scale, table = to_cuda(packed, scale, table)
        input, bias = inputs(rows, k, dtype, n, torch.bfloat16 if rows > 1 else None)
        out = torch.ops.quanta_cuda.linear_lut4(input, packed, table, scale, group_size, bias)
        assert_close(out, input, weight, bias, f"{dtype} {scale_dtype}")


@shapes_and_rows
def test_linear_grouped(shape, rows):
    torch.manual_seed(3)
    n, k, group_size = shape
    weights = itertools.product(CODE_DTYPES, SCALE_DTYPES)
    for dtype, (codes_dtype, scale_dtype) in itertools.product(FLOAT_DTYPES, weights):
        codes, scale, _, _, weight = make_weight(codes_dtype, *shape, scale_dtype, every_byte=False)
        codes, scale = to_cuda(codes.view(getattr(torch, codes_dtype)), scale)
        input, bias = inputs(rows, k, dtype, n, torch.float16)
        out = torch.ops.quanta_cuda.linear_grouped(input, codes, scale, group_size, bias)
        assert_close(out, input, weight, bias, f"{dtype} {codes_dtype} {scale_dtype}")


def affine_case(rows=3, n=37, k=64, group_size=16, dtype=torch.bfloat16):
    packed, scale, zero, _, weight = make_weight(
        "uint4", n, k, group_size, torch.float32, torch.uint8
    )
    packed, scale, zero = to_cuda(packed, scale, zero)
    input = torch.randn(rows, k, device="cuda").to(dtype)
    return input, packed, scale, zero, group_size, weight


def test_leading_dimensions_and_float8_nan_codes():
    torch.manual_seed(4)
    input, packed, scale, zero, group_size, weight = affine_case(rows=6)
    out = torch.ops.quanta_cuda.linear_affine(
        input.reshape(2, 3, -1), packed, scale, zero, 4, group_size, None
    )
    assert out.shape == (2, 3, 37)
    assert_close(out.reshape(6, -1), input, weight, None)
    # float8 codes of every byte: NaN codes give NaN, Inf codes ±Inf or NaN, where fp64 has them
    codes, scale, _, _, weight = make_weight("float8_e5m2", 8, 64, 64, torch.float32)
    codes, scale = to_cuda(codes.view(torch.float8_e5m2), scale)
    out = torch.ops.quanta_cuda.linear_symmetric(input[:1], codes, scale, None)
    expected = expected_out(input[:1], weight, None)
    assert torch.equal(out.isnan(), expected.isnan())


def test_nan_scale_and_infinite_input():
    torch.manual_seed(5)
    input, packed, scale, zero, group_size, _ = affine_case(dtype=torch.float32)
    scale[2, 1] = float("nan")
    input[1, 5] = float("inf")
    out = torch.ops.quanta_cuda.linear_affine(input, packed, scale, zero, 4, group_size, None)
    expected = torch.ops.quanta.linear_affine(
        input.cpu(), packed.cpu(), scale.cpu(), zero.cpu(), 4, group_size, None
    )
    assert torch.equal(out.isnan().cpu(), expected.isnan())
    assert torch.equal(out.isinf().cpu(), expected.isinf())


def test_cuda_graph_capture_and_replay():
    torch.manual_seed(6)
    input, packed, scale, zero, group_size, weight = affine_case(rows=1)
    codes, sym_scale, _, _, sym_weight = make_weight(
        "float8_e4m3fn", 37, 64, 64, torch.float16, every_byte=False
    )
    codes, sym_scale = to_cuda(codes.view(torch.float8_e4m3fn), sym_scale)

    def step(x):
        hidden = torch.ops.quanta_cuda.linear_affine(x, packed, scale, zero, 4, group_size, None)
        return torch.ops.quanta_cuda.linear_symmetric(x, codes, sym_scale, None) + hidden

    step(input)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(input)
    for _ in range(2):
        input.copy_(torch.randn_like(input))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(captured, step(input), rtol=0, atol=0)
    expected = expected_out(input, weight, None) + expected_out(input, sym_weight, None)
    torch.testing.assert_close(captured.double(), expected, rtol=2e-2, atol=2e-2)


def test_runs_on_the_current_stream():
    torch.manual_seed(7)
    input, packed, scale, zero, group_size, weight = affine_case(rows=4)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)
        late = (
            input.clone()
        )  # written once the sleep ends: a kernel on another stream reads it first
        out = torch.ops.quanta_cuda.linear_affine(late, packed, scale, zero, 4, group_size, None)
    stream.synchronize()
    assert_close(out, input, weight, None)


def test_supports_and_checks():
    input, packed, scale, zero, group_size, _ = affine_case(rows=16)
    supports = torch.ops.quanta_cuda.supports
    assert supports("linear_affine", input, packed, group_size)
    assert not supports("linear_affine", torch.cat([input, input[:1]]), packed, group_size)
    assert not supports("linear_affine", input.cpu(), packed, group_size)
    assert not supports("linear_affine", input.double(), packed, group_size)
    assert not supports("linear_int8", input, packed, group_size)
    assert not supports("linear_affine", input.t().contiguous().t(), packed, group_size)
    with pytest.raises(RuntimeError, match="1 to 16 input rows"):
        torch.ops.quanta_cuda.linear_affine(
            torch.cat([input, input[:1]]), packed, scale, zero, 4, group_size, None
        )
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.quanta_cuda.linear_affine(
            input.t().contiguous().t(), packed, scale, zero, 4, group_size, None
        )
    with pytest.raises(RuntimeError, match="input must have dtype in"):
        torch.ops.quanta_cuda.linear_affine(
            input.double(), packed, scale, zero, 4, group_size, None
        )
    with pytest.raises(RuntimeError, match="scale must have dtype in"):
        torch.ops.quanta_cuda.linear_affine(
            input, packed, scale.double(), zero, 4, group_size, None
        )
