"""The CUDA dispatch table (cuda_dispatch): its choices on CPU, the scale handling of the
``_int_mm`` and ``_scaled_mm`` paths through their CPU versions, and, on a CUDA device, every
path against the reference, CUDA-graph capture and torch.compile."""

import os

import pytest
import torch

from quanta.qkernels import cuda_dispatch, reference

SM80, SM89, SM90 = (8, 0), (8, 9), (9, 0)
bf16, fp16, f32 = torch.bfloat16, torch.float16, torch.float32
e4m3, e5m2 = torch.float8_e4m3fn, torch.float8_e5m2
W = (14336, 4096)  # the Llama-3-8B MLP weight [N, K]

# fp8 products summed in fp32 then rounded once to bfloat16: a few bfloat16 steps.
FLOAT8_RTOL = 1e-2
# dequantize + cuBLAS and tinygemm against the reference, each in bfloat16/float16: the weight
# or its zero rounded once to the dtype, products summed in another order.
CUDA_RTOL = {bf16: 2e-2, fp16: 4e-3, f32: 1e-5}


@pytest.fixture(autouse=True)
def default_paths(monkeypatch):
    """Each test starts from the defaults (native kernels off, no forced path)."""
    monkeypatch.delenv("QUANTA_CUDA_KERNELS", raising=False)
    monkeypatch.delenv("QUANTA_CUDA_PATH", raising=False)


@pytest.fixture
def native_loaded(monkeypatch):
    """Pretend the quanta_cuda library holds every native op (for the table's choices)."""
    monkeypatch.setattr(cuda_dispatch, "native_loaded", lambda op: True)


@pytest.mark.parametrize(
    ("op", "input_shape", "dtype", "arch", "options", "path"),
    [
        # W4A16: tinygemm at small M, dequantize + cuBLAS at large M and off its cases
        ("linear_affine", (1, 4096), bf16, SM90, {}, "torch"),
        ("linear_affine", (2, 8, 4096), bf16, SM80, {}, "torch"),
        ("linear_affine", (64, 4096), bf16, SM90, {}, "torch"),
        ("linear_affine", (65, 4096), bf16, SM90, {}, "dequantize"),
        ("linear_affine", (1024, 4096), bf16, SM90, {}, "dequantize"),
        ("linear_affine", (1, 4096), fp16, SM90, {}, "dequantize"),  # tinygemm is bf16 only
        ("linear_affine", (1, 4096), bf16, (7, 5), {}, "dequantize"),
        ("linear_affine", (1, 4096), bf16, SM90, {"bits": 2}, "dequantize"),
        ("linear_affine", (1, 4096), bf16, SM90, {"group_size": 512}, "dequantize"),
        ("linear_affine", (1, 4096), bf16, SM90, {"int4pack": False}, "dequantize"),
        # W8A16 and the 4-bit table / grouped formats: dequantize + cuBLAS
        ("linear_symmetric", (1, 4096), bf16, SM90, {}, "dequantize"),
        ("linear_lut4", (1, 4096), bf16, SM90, {}, "dequantize"),
        ("linear_grouped", (1024, 4096), bf16, SM90, {}, "dequantize"),
        # W8A8 int8: _int_mm at every M on sm_80+
        ("linear_int8", (1, 4096), bf16, SM80, {}, "torch"),
        ("linear_int8", (1024, 4096), fp16, SM90, {}, "torch"),
        ("linear_int8", (1024, 4096), bf16, (7, 5), {}, "dequantize"),
        # W8A8 float8: row-wise _scaled_mm on sm_90+, bfloat16 out, e4m3 codes
        ("linear_float8", (1024, 4096), bf16, SM90, {}, "torch"),
        ("linear_float8", (1, 4096), bf16, SM90, {}, "torch"),
        ("linear_float8", (1024, 4096), bf16, SM89, {}, "dequantize"),
        ("linear_float8", (1024, 4096), fp16, SM90, {}, "dequantize"),
        ("linear_float8", (1024, 4096), bf16, SM90, {"code_dtype": e5m2}, "dequantize"),
        ("linear_float8", (0, 4096), bf16, SM90, {}, "dequantize"),
    ],
)
def test_default_table(op, input_shape, dtype, arch, options, path):
    assert cuda_dispatch.describe(op, input_shape, W, dtype, arch, **options) == path


def test_odd_shapes_leave_the_torch_kernels():
    assert cuda_dispatch.describe("linear_affine", (1, 4100), (14336, 4100), bf16, SM90) == (
        "dequantize"
    )
    assert cuda_dispatch.describe("linear_int8", (32, 4096), (14330, 4096), bf16, SM90) == (
        "dequantize"
    )
    assert cuda_dispatch.describe("linear_float8", (32, 4104), (4096, 4104), bf16, SM90) == (
        "dequantize"
    )


@pytest.mark.parametrize(
    ("op", "options"),
    [
        ("linear_affine", {}),
        ("linear_affine", {"bits": 2}),
        ("linear_symmetric", {"code_dtype": e4m3}),
        ("linear_lut4", {}),
        ("linear_grouped", {}),
    ],
)
def test_native_decode_only_when_on_and_loaded(monkeypatch, op, options):
    def path(rows, dtype=bf16):
        return cuda_dispatch.describe(op, (rows, 4096), W, dtype, SM90, **options)

    assert path(1) != "native"  # off by default
    monkeypatch.setenv("QUANTA_CUDA_KERNELS", "1")
    assert path(1) != "native" or cuda_dispatch.native_loaded(op)  # needs _C_cuda's op
    monkeypatch.setattr(cuda_dispatch, "native_loaded", lambda op: True)
    assert [path(rows) for rows in (1, 16)] == ["native", "native"]
    assert path(17) != "native"
    assert path(1, torch.float64) != "native"


def test_native_never_runs_w8a8(monkeypatch, native_loaded):
    monkeypatch.setenv("QUANTA_CUDA_KERNELS", "1")
    assert cuda_dispatch.describe("linear_int8", (1, 4096), W, bf16, SM90) == "torch"


def test_a_forced_path_runs_where_it_can(monkeypatch, native_loaded):
    monkeypatch.setenv("QUANTA_CUDA_PATH", "torch")
    assert cuda_dispatch.describe("linear_affine", (1024, 4096), W, bf16, SM90) == "torch"
    monkeypatch.setenv("QUANTA_CUDA_PATH", "dequantize")
    assert cuda_dispatch.describe("linear_affine", (1, 4096), W, bf16, SM90) == "dequantize"
    monkeypatch.setenv("QUANTA_CUDA_PATH", "native")  # needs no QUANTA_CUDA_KERNELS
    assert cuda_dispatch.describe("linear_lut4", (3, 4096), W, bf16, SM90) == "native"


@pytest.mark.parametrize(
    ("value", "op", "rows", "message"),
    [
        ("torch", "linear_symmetric", 1, "QUANTA_CUDA_PATH=torch cannot run"),
        ("native", "linear_affine", 17, "paths that can: torch, dequantize"),
        ("tinygemm", "linear_affine", 1, "QUANTA_CUDA_PATH must be one of"),
    ],
)
def test_a_forced_path_that_cannot_run_is_an_error(monkeypatch, value, op, rows, message):
    monkeypatch.setenv("QUANTA_CUDA_PATH", value)
    monkeypatch.setattr(cuda_dispatch, "native_loaded", lambda op: True)
    with pytest.raises(ValueError, match=message):
        cuda_dispatch.describe(op, (rows, 4096), W, bf16, SM90)


def w8a8_arguments(rows, n, k, code_dtype, per_row, with_bias, dtype):
    generator = torch.Generator().manual_seed(rows * 7 + n)
    if code_dtype == torch.int8:
        input = torch.randint(-128, 128, (rows, k), dtype=torch.int8, generator=generator)
        codes = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    else:
        input = torch.randn(rows, k, generator=generator).mul(64).to(code_dtype)
        codes = torch.randn(n, k, generator=generator).mul(64).to(code_dtype)
    shape = (rows, 1) if per_row else ()
    input_scale = (torch.rand(shape, generator=generator) * 1e-2 + 1e-3).to(dtype)
    scale = (torch.rand(n, 1, generator=generator) * 1e-2 + 1e-3).to(dtype)
    bias = torch.randn(n, generator=generator).to(dtype) if with_bias else None
    return input, input_scale, codes, scale, bias, dtype


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("per_row", [True, False], ids=["per_token", "per_tensor"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_int_mm_path_equals_the_reference(rows, per_row, with_bias):
    # CPU's _int_mm sums exactly as CUDA's; padding fewer than 17 rows changes nothing
    args = w8a8_arguments(rows, 24, 64, torch.int8, per_row, with_bias, bf16)
    assert torch.equal(cuda_dispatch.int_mm_linear(*args), reference.linear_int8(*args))


@pytest.mark.parametrize("rows", [1, 5, 32])
@pytest.mark.parametrize("per_row", [True, False], ids=["per_token", "per_tensor"])
@pytest.mark.parametrize("dtype", [bf16, f32])
def test_scaled_mm_path_scales_as_the_reference(rows, per_row, dtype):
    args = w8a8_arguments(rows, 32, 64, e4m3, per_row, True, dtype)
    out = cuda_dispatch.scaled_mm_linear(*args)
    expected = reference.linear_float8(*args)
    assert out.shape == expected.shape and out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=FLOAT8_RTOL, atol=FLOAT8_RTOL)


@pytest.mark.parametrize("code_dtype", [e4m3, e5m2])
@pytest.mark.parametrize("per_row", [True, False], ids=["per_token", "per_tensor"])
def test_linear_float8_is_the_scaled_product_of_the_codes(code_dtype, per_row):
    input, input_scale, codes, scale, bias, _ = w8a8_arguments(
        4, 24, 64, code_dtype, per_row, True, f32
    )
    batched_scale = input_scale[None] if per_row else input_scale  # [1, 4, 1] or 0-d
    out = torch.ops.quanta.linear_float8(input[None], batched_scale, codes, scale, bias, f32)
    exact = input.double() @ codes.double().t() * input_scale.double().reshape(-1, 1)
    exact = exact * scale.double().t() + bias.double()
    assert out.shape == (1, 4, 24)
    torch.testing.assert_close(out[0].double(), exact, rtol=1e-5, atol=1e-5)  # fp32 sums


def test_linear_float8_nan_in_nan_out():
    input, input_scale, codes, scale, bias, _ = w8a8_arguments(3, 8, 32, e4m3, True, False, bf16)
    input[1, 5] = float("nan")
    out = torch.ops.quanta.linear_float8(input, input_scale, codes, scale, bias, bf16)
    assert out[1].isnan().all() and not out[[0, 2]].isnan().any()


def test_settings_read_the_environment(monkeypatch):
    assert cuda_dispatch.settings() == (False, None)
    monkeypatch.setenv("QUANTA_CUDA_KERNELS", "1")
    monkeypatch.setenv("QUANTA_CUDA_PATH", "dequantize")
    assert cuda_dispatch.settings() == (True, "dequantize")


# --- on a CUDA device ----------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ROWS = (1, 4, 16, 17, 64, 65, 1024, 4096)


def rel(actual, expected):
    actual, expected = actual.float(), expected.float()
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-30))


def affine_parts(n, k, group_size, dtype, device="cuda"):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, device=device)
    scale = (torch.rand(n, k // group_size, device=device) * 0.02 + 0.001).to(dtype)
    zero_point = torch.randint(0, 16, (n, k // group_size), dtype=torch.uint8, device=device)
    return torch.ops.quanta.pack(codes, 4), scale, zero_point


def linear_cases(device="cuda"):
    """(op name, args builder(rows, dtype)) for every linear op, odd N, K of whole groups."""
    n, k = 200, 256
    table = torch.linspace(-1, 1, 16, device=device)

    def affine(rows, dtype):
        packed, scale, zero = affine_parts(n, k, 64, dtype, device)
        return (torch.randn(rows, k, device=device, dtype=dtype), packed, scale, zero, 4, 64, None)

    def symmetric(rows, dtype):
        codes = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
        scale = torch.rand(n, 1, device=device, dtype=dtype) * 0.01
        bias = torch.randn(n, device=device, dtype=dtype)
        return (torch.randn(rows, k, device=device, dtype=dtype), codes, scale, bias)

    def lut4(rows, dtype):
        packed, scale, _ = affine_parts(n, k, 32, dtype, device)
        return (torch.randn(rows, k, device=device, dtype=dtype), packed, table, scale, 32, None)

    def grouped(rows, dtype):
        codes = torch.randn(n, k, device=device).to(e4m3)
        scale = (torch.rand(n, k // 32, device=device) * 0.01).to(dtype)
        return (torch.randn(rows, k, device=device, dtype=dtype), codes, scale, 32, None)

    def int8(rows, dtype):
        args = w8a8_arguments(rows, 256, k, torch.int8, True, True, dtype)
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)

    def float8(rows, dtype):
        args = w8a8_arguments(rows, 256, k, e4m3, True, True, dtype)
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)

    return {
        "linear_affine": affine,
        "linear_symmetric": symmetric,
        "linear_lut4": lut4,
        "linear_grouped": grouped,
        "linear_int8": int8,
        "linear_float8": float8,
    }


@pytest.mark.parametrize("op", list(cuda_dispatch.KERNELS))
def test_the_cuda_kernels_pass_their_arguments_through(op):
    # off CUDA no CUDA path fits: each kernel runs the reference with its own arguments
    args = linear_cases("cpu")[op](3, bf16)
    assert torch.equal(cuda_dispatch.KERNELS[op](*args), getattr(reference, op)(*args))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("native", ["0", "1"], ids=["default", "native_on"])
@pytest.mark.parametrize("dtype", [bf16, fp16])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("op", list(cuda_dispatch.KERNELS))
def test_every_cuda_path_matches_the_reference(monkeypatch, op, rows, dtype, native):
    monkeypatch.setenv("QUANTA_CUDA_KERNELS", native)
    torch.manual_seed(rows)
    args = linear_cases()[op](rows, dtype)
    out = getattr(torch.ops.quanta, op)(*args)
    cpu_args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
    expected = getattr(reference, op)(*cpu_args)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert rel(out.cpu(), expected) < CUDA_RTOL[dtype], cuda_dispatch.describe(
        op, args[0].shape, (expected.shape[-1], args[0].shape[-1]), dtype,
        torch.cuda.get_device_capability(),
    )  # fmt: skip


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", [(256, 4096), (4104, 384)], ids=["llama", "odd"])
def test_tinygemm_form_matches_the_reference(rows, shape):
    n, k = shape
    packed, scale, zero = affine_parts(n, k, 128, bf16)
    form = cuda_dispatch.int4pack_for(packed, scale, zero, 4, 128)
    assert form is not None
    input = torch.randn(rows, k, device="cuda", dtype=bf16)
    bias = torch.randn(n, device="cuda", dtype=bf16)
    out = cuda_dispatch.linear_affine_int4pack(input, packed, scale, zero, 128, bias, *form)
    expected = reference.linear_affine(input.cpu(), packed.cpu(), scale.cpu(), zero.cpu(), 4, 128,
                                       bias.cpu())  # fmt: skip
    assert rel(out.cpu(), expected) < CUDA_RTOL[bf16]


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("op", list(cuda_dispatch.KERNELS))
def test_opcheck_on_cuda(op):
    args = linear_cases()[op](17, bf16)
    torch.library.opcheck(
        getattr(torch.ops.quanta, op).default,
        args,
        test_utils=("test_faketensor", "test_aot_dispatch_dynamic"),
    )


def captured(fn, *args):
    """fn(*args) captured in a CUDA graph and replayed, with the eager result."""
    expected = fn(*args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(*args)  # warm up (cuBLAS workspaces) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args)
    graph.replay()
    torch.cuda.synchronize()
    return out, expected


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("rows", [1, 32])
@pytest.mark.parametrize("op", list(cuda_dispatch.KERNELS))
def test_cuda_graph_capture_and_replay(op, rows):
    args = linear_cases()[op](rows, bf16)
    out, expected = captured(getattr(torch.ops.quanta, op), *args)
    torch.testing.assert_close(out, expected)  # cuBLAS may pick another algorithm in capture


@cuda
@pytest.mark.cuda
def test_cuda_graph_of_the_tinygemm_form():
    packed, scale, zero = affine_parts(256, 4096, 128, bf16)
    form = cuda_dispatch.int4pack_for(packed, scale, zero, 4, 128)
    input = torch.randn(1, 4096, device="cuda", dtype=bf16)

    def fn(x):
        return cuda_dispatch.linear_affine_int4pack(x, packed, scale, zero, 128, None, *form)

    out, expected = captured(fn, input)
    torch.testing.assert_close(out, expected)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("op", list(cuda_dispatch.KERNELS))
def test_compile_fullgraph(op):
    torch._dynamo.reset()
    args = linear_cases()[op](4, bf16)
    fn = getattr(torch.ops.quanta, op)
    compiled = torch.compile(lambda *a: fn(*a), fullgraph=True)
    torch.testing.assert_close(compiled(*args), fn(*args))


@cuda
@pytest.mark.cuda
def test_compile_fullgraph_through_the_tinygemm_form():
    torch._dynamo.reset()
    packed, scale, zero = affine_parts(256, 4096, 128, bf16)
    form = cuda_dispatch.int4pack_for(packed, scale, zero, 4, 128)

    def fn(x):
        return cuda_dispatch.linear_affine_int4pack(x, packed, scale, zero, 128, None, *form)

    input = torch.randn(2, 4096, device="cuda", dtype=bf16)
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(input), fn(input))


def test_the_cuda_kernels_are_registered_where_torch_has_cuda():
    has = {
        op: torch._C._dispatch_has_kernel_for_dispatch_key(f"quanta::{op}", "CUDA")
        for op in cuda_dispatch.KERNELS
    }
    assert set(has.values()) == {torch.version.cuda is not None}
    assert os.environ.get("QUANTA_CUDA_PATH") is None
