"""The math of the native CUDA decode kernels, checked on the CPU: qkernels/cuda_decode_math.h
compiled by the host C++ compiler (tests/cuda_decode_math_check.cpp) against
quanta.qkernels.reference on fresh random inputs: 16-bit float and float8 / e8m0 conversions, code
extraction and dequantization per group (bit for bit), and each lane's share of a kernel launch
added up as the warps add it (odd K, groups that split the kernels' 8-code steps, 1 to 16 rows)."""

import ctypes
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_cpu_kernels import TOLERANCE

from quanta.qkernels import reference

HERE = Path(__file__).parent
INCLUDE = HERE.parent / "csrc" / "include"
# The enums of cuda_decode_math.h.
FORMATS = {"uint4": 0, "uint2": 1, "lut4": 2, "int8": 3, "float8_e4m3fn": 4, "float8_e5m2": 5}
PARAM_TYPES = {
    None: 0,
    torch.float32: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
    torch.uint8: 4,
    torch.float8_e4m3fn: 5,
    torch.float8_e8m0fnu: 6,
}
ACT_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
NF4_TABLE = torch.tensor(
    [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
     0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]
)  # fmt: skip


@pytest.fixture(scope="module")
def math_lib(tmp_path_factory):
    """The check library, compiled once per run (-O0: the inputs are small, the build is not)."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the CUDA decode math for the host")
    library = tmp_path_factory.mktemp("cuda_decode_math") / "check.so"
    source = HERE / "cuda_decode_math_check.cpp"
    command = [compiler, "-std=c++20", "-O0", "-shared", "-fPIC", f"-I{INCLUDE}", str(source)]
    subprocess.run([*command, "-o", str(library)], check=True)
    return ctypes.CDLL(str(library))


def pointer(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None else t.data_ptr())


def assert_same_floats(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal bit for bit, except that any NaN matches any NaN."""
    nan = expected.isnan()
    assert torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan].view(torch.int32), expected[~nan].view(torch.int32))


def every_16_bit_pattern(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize(
    "dtype, function",
    [(torch.bfloat16, "qk_bfloat16_to_float"), (torch.float16, "qk_float16_to_float")],
)
def test_16_bit_floats_widen_exactly(math_lib, dtype, function):
    bits = every_16_bit_pattern(dtype)
    out = torch.empty(bits.shape, dtype=torch.float32)
    getattr(math_lib, function)(pointer(bits), pointer(out), ctypes.c_int64(bits.numel()))
    assert_same_floats(out, bits.float())


@pytest.mark.parametrize(
    "dtype, function",
    [(torch.bfloat16, "qk_float_to_bfloat16"), (torch.float16, "qk_float_to_float16")],
)
def test_floats_round_to_16_bits_to_nearest_even(math_lib, dtype, function):
    torch.manual_seed(1)
    random_bits = torch.randint(-(2**31), 2**31, (1 << 16,), dtype=torch.int64)
    every_exponent = random_bits.to(torch.int32).view(torch.float32)  # subnormals, Inf, NaN
    widened = every_16_bit_pattern(dtype).float()
    halfway = (widened + widened.nextafter(torch.tensor(float("inf")))) / 2  # ties
    values = torch.cat([every_exponent, halfway, torch.randn(4096) * 1e3])
    out = torch.empty(values.shape, dtype=torch.int16)
    getattr(math_lib, function)(pointer(values), pointer(out), ctypes.c_int64(values.numel()))
    assert_same_floats(out.view(dtype).float(), values.to(dtype).float())


@pytest.mark.parametrize(
    "format", ["uint4", "uint2", "lut4", "int8", "float8_e4m3fn", "float8_e5m2"]
)
def test_code_values(math_lib, format):
    table = torch.randn(16)
    out = torch.empty(256)
    math_lib.qk_code_values(FORMATS[format], pointer(table), pointer(out))
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    expected = {
        "uint4": (every_byte & 15).float(),
        "uint2": (every_byte & 3).float(),
        "lut4": table[(every_byte & 15).long()],
        "int8": every_byte.view(torch.int8).float(),
    }.get(format)
    if expected is None:
        expected = every_byte.view(getattr(torch, format)).float()
    assert_same_floats(out, expected)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e8m0fnu, torch.uint8])
def test_scale_and_zero_point_bytes(math_lib, dtype):
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype)
    out = torch.empty(256)
    math_lib.qk_param_values(pointer(every_byte), PARAM_TYPES[dtype], pointer(out), 256)
    assert_same_floats(out, every_byte.float())


# (N, K, group_size): vector loads and groups of whole 8-code steps; K spread over more chunks
# than a warp has lanes; odd K (a half-used last byte, rows not 16-byte aligned) with groups that
# split steps; one group a row.
SHAPES = [(6, 64, 16), (5, 1088, 64), (7, 45, 15), (4, 30, 10), (3, 77, 77)]


# The codes' typical magnitude: the scales make weights of O(1 / sqrt(K)), outputs of O(1).
CODE_MAGNITUDE = {
    "uint4": 8,
    "uint2": 2,
    "lut4": 1,
    "int8": 64,
    "float8_e4m3fn": 4,
    "float8_e5m2": 4,
}


def make_weight(format, n, k, group_size, scale_dtype, zero_dtype=None, every_byte=True):
    """Random codes and parameters of a weight in `format`, and the reference's fp32 weight;
    every_byte: float8 codes of every byte (NaN and Inf included), else of O(4)."""
    groups = k // group_size
    scale = (torch.rand(n, groups) + 0.5) / (CODE_MAGNITUDE[format] * k**0.5)
    scale = scale.to(scale_dtype)
    zero, table, packed = None, None, None
    if format in ("uint4", "uint2", "lut4"):
        bits = 4 if format != "uint2" else 2
        codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8)
        packed = torch.ops.quanta.pack(codes, bits)
    if format in ("uint4", "uint2"):
        zero = (torch.rand(n, groups) * (2**bits - 1)).to(zero_dtype)  # uint8 truncates
        weight = reference.dequantize_affine(codes, scale, zero, group_size, torch.float32)
    elif format == "lut4":
        table = NF4_TABLE
        weight = reference.dequantize_lut4(codes, table, scale, group_size, torch.float32)
    else:
        if format == "int8":
            packed = torch.randint(-128, 128, (n, k), dtype=torch.int8)
        elif every_byte:
            packed = torch.randint(0, 256, (n, k), dtype=torch.uint8).view(getattr(torch, format))
        else:
            packed = (torch.randn(n, k) * 4).to(getattr(torch, format))
        weight = reference.dequantize_grouped(packed, scale, group_size, torch.float32)
    return packed.view(torch.uint8), scale, zero, table, weight


def dequantize(math_lib, format, packed, scale, zero, table, n, k, group_size):
    out = torch.empty(n, k)
    math_lib.qk_dequantize(
        pointer(packed), FORMATS[format], pointer(scale), PARAM_TYPES[scale.dtype],
        pointer(zero), PARAM_TYPES[None if zero is None else zero.dtype], pointer(table),
        ctypes.c_int64(n), ctypes.c_int64(k), ctypes.c_int64(group_size), pointer(out),
    )  # fmt: skip
    return out


# (format, scale dtype, zero point dtype): every scale and zero point dtype of each format
WEIGHTS = [
    ("uint4", torch.float32, torch.uint8),
    ("uint4", torch.bfloat16, torch.float32),
    ("uint2", torch.float16, torch.bfloat16),
    ("uint2", torch.float32, torch.float16),
    ("lut4", torch.bfloat16, None),
    ("lut4", torch.float8_e4m3fn, None),
    ("lut4", torch.float8_e8m0fnu, None),
    ("int8", torch.float16, None),
    ("float8_e4m3fn", torch.float8_e8m0fnu, None),
    ("float8_e5m2", torch.float32, None),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("weight", WEIGHTS, ids=lambda w: "-".join(str(x) for x in w))
def test_dequantization_equals_the_reference_bit_for_bit(math_lib, weight, shape):
    torch.manual_seed(2)
    format, scale_dtype, zero_dtype = weight
    packed, scale, zero, table, expected = make_weight(format, *shape, scale_dtype, zero_dtype)
    out = dequantize(math_lib, format, packed, scale, zero, table, *shape)
    assert_same_floats(out, expected)


def linear_decode(math_lib, format, input, packed, scale, zero, table, bias, n, group_size):
    """The decode kernel's output, its lanes run on the host."""
    m, k = input.shape
    out = torch.empty(m, n, dtype=input.dtype)
    math_lib.qk_linear_decode(
        pointer(input), ACT_TYPES[input.dtype], pointer(packed), FORMATS[format], pointer(scale),
        PARAM_TYPES[scale.dtype], pointer(zero), PARAM_TYPES[None if zero is None else zero.dtype],
        pointer(bias), PARAM_TYPES[None if bias is None else bias.dtype], pointer(table),
        ctypes.c_int64(m), ctypes.c_int64(n), ctypes.c_int64(k), ctypes.c_int64(group_size),
        pointer(out),
    )  # fmt: skip
    return out


@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("dtype", list(ACT_TYPES), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lanes_sum_to_the_linear_output(math_lib, shape, dtype, rows):
    """Every format once a shape (cycling through WEIGHTS), with a bias of another dtype."""
    torch.manual_seed(3)
    n, k, group_size = shape
    for format, scale_dtype, zero_dtype in WEIGHTS[SHAPES.index(shape) :: len(SHAPES)]:
        packed, scale, zero, table, weight = make_weight(
            format, *shape, scale_dtype, zero_dtype, every_byte=False
        )
        input = torch.randn(rows, k).to(dtype)
        bias = torch.randn(n, dtype=torch.float32 if dtype != torch.float32 else torch.bfloat16)
        out = linear_decode(
            math_lib, format, input, packed, scale, zero, table, bias, n, group_size
        )
        expected = F.linear(input.double(), weight.double(), bias.to(dtype).double())
        rtol, atol = TOLERANCE[dtype]
        torch.testing.assert_close(out.double(), expected, rtol=rtol, atol=atol)


def test_nan_scale_and_infinite_input_give_nan_and_inf_where_the_reference_does(math_lib):
    torch.manual_seed(4)
    n, k, group_size = 6, 64, 16
    packed, scale, zero, table, _ = make_weight(
        "uint4", n, k, group_size, torch.float32, torch.uint8
    )
    scale[2, 1] = float("nan")
    input = torch.randn(3, k)
    input[1, 5] = float("inf")
    out = linear_decode(math_lib, "uint4", input, packed, scale, zero, table, None, n, group_size)
    expected = reference.linear_affine(input, packed, scale, zero, 4, group_size, None)
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(out.isinf(), expected.isinf())


# The interface of the quanta_cuda ops that the Python dispatch codes against.
QUANTA_CUDA_SCHEMAS = [
    "quanta_cuda::linear_affine(Tensor input, Tensor packed, Tensor scale, Tensor zero_point, "
    "int bits, int group_size, Tensor? bias) -> Tensor",
    "quanta_cuda::linear_symmetric(Tensor input, Tensor codes, Tensor scale, Tensor? bias) "
    "-> Tensor",
    "quanta_cuda::linear_lut4(Tensor input, Tensor packed, Tensor table, Tensor scale, "
    "int group_size, Tensor? bias) -> Tensor",
    "quanta_cuda::linear_grouped(Tensor input, Tensor codes, Tensor scale, int group_size, "
    "Tensor? bias) -> Tensor",
    "quanta_cuda::supports(str op, Tensor input, Tensor weight_codes, int group_size) -> bool",
]


def test_cuda_library_declares_the_quanta_cuda_ops():
    """_C_cuda loads with a CPU build of torch too (stable ABI), so its schemas are checked here."""
    spec = importlib.util.find_spec("quanta.qkernels._C_cuda")
    if spec is None or spec.origin is None:
        pytest.skip("quanta.qkernels was built without its CUDA library")
    torch.ops.load_library(spec.origin)
    ops = torch.ops.quanta_cuda
    names = [schema.split("(")[0].removeprefix("quanta_cuda::") for schema in QUANTA_CUDA_SCHEMAS]
    schemas = [str(getattr(ops, name).default._schema) for name in names]
    assert schemas == QUANTA_CUDA_SCHEMAS
    # answers for any device: no kernel off CUDA
    codes = torch.zeros(8, 32, dtype=torch.uint8)
    assert not ops.supports("linear_affine", torch.randn(1, 64), codes, 16)
