"""The CUDA kernels of quanta's linear ops: a table picks a path per call by (M, K, N, dtype, arch).

Paths (docs/ops.md, "CUDA kernels"):
- "native": quanta's own decode kernels (``torch.ops.quanta_cuda.*``, M <= 16), only when the
  environment variable ``QUANTA_CUDA_KERNELS=1`` and ``_C_cuda`` holds them: off by default
  until they have passed their tests on a device.
- "torch": torch's own kernels: tinygemm ``_weight_int4pack_mm`` for 4-bit affine weights
  held in its layout (cuda_layouts) at small M, ``_int_mm`` for W8A8 int8, ``_scaled_mm`` with
  per-token and per-channel scales for W8A8 float8.
- "dequantize": the reference: the weight dequantized to the input's dtype, then cuBLAS.

``QUANTA_CUDA_PATH`` ("native", "torch" or "dequantize") forces one path for benchmarking; a
forced path that cannot run a case is a ValueError. Both variables are read on every eager call
(under torch.compile, once, when the graph is traced).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quanta.qkernels import _validate as v
from quanta.qkernels import reference
from quanta.qkernels.cuda_layouts import Int4Pack, int4pack_fits, int4pack_mm, to_int4pack

__all__ = [
    "PATHS",
    "Case",
    "choose",
    "describe",
    "int4pack_for",
    "int_mm_linear",
    "linear_affine_int4pack",
    "register",
    "scaled_mm_linear",
    "settings",
]

PATHS = ("native", "torch", "dequantize")
#: Ops the native decode kernels implement (the quanta_cuda library, docs/ops.md).
NATIVE_OPS = ("linear_affine", "linear_symmetric", "linear_lut4", "linear_grouped")
#: Input rows the native decode kernels take.
NATIVE_MAX_ROWS = 16
NATIVE_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NATIVE_SYMMETRIC_CODES = (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)
NATIVE_SCALES = NATIVE_INPUT_DTYPES
NATIVE_GROUP_SCALES = (*NATIVE_INPUT_DTYPES, torch.float8_e4m3fn, torch.float8_e8m0fnu)
#: Input rows up to which tinygemm beats dequantize + cuBLAS: optimum-quanto's tinygemm takes
#: 23.9 us at M=1 and 3987 us at M=1024 on an H100 (issue 20); the crossing is not measured yet.
TINYGEMM_MAX_ROWS = 64
#: cuBLASLt's int8 GEMM (``_int_mm``) on CUDA wants more than 16 rows: fewer are padded.
INT_MM_MIN_ROWS = 17
#: The oldest GPUs each torch kernel runs on: tinygemm and ``_int_mm`` need sm_80, row-wise
#: scaled ``_scaled_mm`` sm_90 (fp8 tensor cores start at sm_89, without row-wise scales there).
TINYGEMM_ARCH = INT_MM_ARCH = NATIVE_ARCH = (8, 0)
SCALED_MM_ARCH = (9, 0)


@dataclass(frozen=True)
class Case:
    """One call of a linear op, as the table sees it: the op, input rows M, weight [N, K],
    input dtype (output dtype for linear_int8 / linear_float8), GPU architecture, and the
    weight's format where it matters."""

    op: str
    rows: int
    n: int
    k: int
    dtype: torch.dtype
    arch: tuple[int, int]
    bits: int = 4
    group_size: int = 128
    code_dtype: torch.dtype | None = None  # codes of linear_symmetric / input of W8A8
    int4pack: bool = False  # the weight is held in tinygemm's layout too
    native_parts: bool = True  # its scales, zero points and bias have dtypes the native take


@torch.compiler.assume_constant_result
def settings() -> tuple[bool, str | None]:
    """(QUANTA_CUDA_KERNELS=1, QUANTA_CUDA_PATH or None), checked."""
    forced = os.environ.get("QUANTA_CUDA_PATH") or None
    if forced is not None and forced not in PATHS:
        raise ValueError(
            f"QUANTA_CUDA_PATH must be one of {', '.join(PATHS)} or unset, got {forced!r}"
        )
    return os.environ.get("QUANTA_CUDA_KERNELS") == "1", forced


@functools.cache
def native_loaded(op: str) -> bool:
    """Whether the native library (``_C_cuda``) defines ``quanta_cuda::<op>``."""
    return hasattr(torch.ops.quanta_cuda, op)


def _native_fits(case: Case) -> bool:
    return (
        case.op in NATIVE_OPS
        and 1 <= case.rows <= NATIVE_MAX_ROWS
        and case.dtype in NATIVE_INPUT_DTYPES
        and case.arch >= NATIVE_ARCH
        and (case.op != "linear_affine" or case.bits in (2, 4))
        and (case.op != "linear_symmetric" or case.code_dtype in NATIVE_SYMMETRIC_CODES)
        and case.native_parts
        and native_loaded(case.op)
    )


def _native_parts(op: str, input, codes, scale, zero_point, bias, group_size: int) -> bool:
    """Whether the native kernel of `op` takes these parts (dtypes, and the library's own
    ``quanta_cuda::supports`` where it has one); asked only where the native path is on."""
    scales = NATIVE_GROUP_SCALES if op in ("linear_lut4", "linear_grouped") else NATIVE_SCALES
    fits = (
        scale.dtype in scales
        and (zero_point is None or zero_point.dtype in (torch.uint8, *NATIVE_SCALES))
        and (bias is None or bias.dtype in NATIVE_INPUT_DTYPES)
    )
    if fits and native_loaded("supports"):
        return torch.ops.quanta_cuda.supports(op, input, codes, group_size)
    return fits


def _torch_fits(case: Case) -> bool:
    if case.rows < 1:
        return False
    if case.op == "linear_affine":
        return (
            case.int4pack
            and case.dtype == torch.bfloat16
            and case.arch >= TINYGEMM_ARCH
            and int4pack_fits(case.n, case.k, case.bits, case.group_size)
        )
    if case.op == "linear_int8":
        return (
            case.code_dtype == torch.int8
            and case.arch >= INT_MM_ARCH
            and case.k % 8 == 0
            and case.n % 8 == 0
        )
    if case.op == "linear_float8":
        return (
            case.code_dtype == torch.float8_e4m3fn
            and case.dtype == torch.bfloat16
            and case.arch >= SCALED_MM_ARCH
            and case.k % 16 == 0
            and case.n % 16 == 0
        )
    return False


def choose(case: Case) -> str:
    """The path of `case`: native decode where it is on and fits, then torch's kernel where it
    fits (tinygemm up to TINYGEMM_MAX_ROWS rows), else dequantize; or the forced path."""
    native_on, forced = settings()
    fits = {"native": _native_fits(case), "torch": _torch_fits(case), "dequantize": True}
    if forced is not None:
        if not fits[forced]:
            allowed = ", ".join(path for path in PATHS if fits[path])
            raise ValueError(
                f"QUANTA_CUDA_PATH={forced} cannot run quanta::{case.op} with {case.rows} rows, "
                f"weight [{case.n}, {case.k}] and {case.dtype} here; paths that can: {allowed}"
            )
        return forced
    if native_on and fits["native"]:
        return "native"
    small = case.op != "linear_affine" or case.rows <= TINYGEMM_MAX_ROWS
    return "torch" if fits["torch"] and small else "dequantize"


def describe(
    op: str,
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, int],
    dtype: torch.dtype,
    arch: tuple[int, int],
    *,
    bits: int = 4,
    group_size: int = 128,
    code_dtype: torch.dtype | None = None,
    int4pack: bool | None = None,
) -> str:
    """The path ("native", "torch" or "dequantize") the table picks for a call of quanta::`op`
    on an input of `input_shape` and a weight [N, K], now (the environment variables included).

    code_dtype: linear_symmetric's codes (default int8) or linear_float8's (default e4m3fn).
    int4pack: whether a linear_affine weight is held in tinygemm's layout; by default where it
    fits, as quanta's modules hold it on CUDA.
    """
    n, k = weight_shape
    if code_dtype is None:
        code_dtype = torch.float8_e4m3fn if op == "linear_float8" else torch.int8
    if int4pack is None:
        int4pack = int4pack_fits(n, k, bits, group_size)
    rows = math.prod(input_shape[:-1])
    case = Case(op, rows, n, k, dtype, tuple(arch), bits, group_size, code_dtype, int4pack)
    return choose(case)


def _arch(device: torch.device) -> tuple[int, int]:
    """The device's compute capability; (0, 0) off CUDA, where no CUDA path fits."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)


def _rows(input: torch.Tensor) -> int:
    return math.prod(input.shape[:-1])


def _native_or_reference(
    op: str, args: tuple, codes, scale, zero_point, bias, group_size: int, bits: int = 4
) -> torch.Tensor:
    """quanta_cuda::`op`(*args) where the table picks the native path, else reference.`op`."""
    input = args[0]
    native_on, forced = settings()
    parts = (native_on or forced == "native") and _native_parts(
        op, input, codes, scale, zero_point, bias, group_size
    )
    case = Case(
        op,
        _rows(input),
        codes.shape[0],
        input.shape[-1],
        input.dtype,
        _arch(input.device),
        bits,
        group_size,
        codes.dtype,
        native_parts=parts,
    )
    if choose(case) == "native":
        return getattr(torch.ops.quanta_cuda, op)(input.contiguous(), *args[1:])
    return getattr(reference, op)(*args)


def linear_affine(input, packed, scale, zero_point, bits, group_size, bias):
    """quanta::linear_affine on CUDA: native decode or dequantize (tinygemm needs its layout,
    built once per weight: `linear_affine_int4pack`)."""
    args = (input, packed, scale, zero_point, bits, group_size, bias)
    v.check_linear_affine(*args)
    return _native_or_reference(
        "linear_affine", args, packed, scale, zero_point, bias, group_size, bits
    )


def linear_affine_int4pack(
    input: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
    int4pack_weight: torch.Tensor,
    int4pack_scales_and_zeros: torch.Tensor,
) -> torch.Tensor:
    """quanta::linear_affine of a 4-bit weight also held in tinygemm's layout (the two tensors
    of `int4pack_for(packed, scale, zero_point, 4, group_size)`): tinygemm at small M, else the
    op (native decode or dequantize + cuBLAS). No gradient flows through tinygemm: call it
    without autograd."""
    n, k = packed.shape[0], input.shape[-1]
    # a form is built only on GPUs tinygemm runs on (int4pack_for)
    arch = TINYGEMM_ARCH
    case = Case(
        "linear_affine", _rows(input), n, k, input.dtype, arch, 4, group_size, int4pack=True
    )
    if choose(case) != "torch":
        return torch.ops.quanta.linear_affine(input, packed, scale, zero_point, 4, group_size, bias)
    form = Int4Pack(int4pack_weight, int4pack_scales_and_zeros)
    out = int4pack_mm(input.reshape(-1, k).contiguous(), form, group_size)
    out = out.reshape(*input.shape[:-1], n)
    return out if bias is None else out + bias.to(out.dtype)


def int4pack_for(
    packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, group_size: int
) -> Int4Pack | None:
    """The tinygemm form of a packed affine weight on a CUDA device where
    `linear_affine_int4pack` can use it, else None: a bfloat16 weight (tinygemm multiplies
    bfloat16 inputs only, and inputs come in the weight's dtype) on sm_80+ in a shape it takes."""
    n, k = packed.shape[0], 2 * packed.shape[1]
    usable = (
        packed.device.type == "cuda"
        and scale.dtype == torch.bfloat16
        and _arch(packed.device) >= TINYGEMM_ARCH
        and int4pack_fits(n, k, bits, group_size)
    )
    return to_int4pack(packed, scale, zero_point, group_size) if usable else None


def linear_symmetric(input, codes, scale, bias):
    """quanta::linear_symmetric on CUDA: native decode or dequantize."""
    v.check_linear_symmetric(input, codes, scale, bias)
    args = (input, codes, scale, bias)
    return _native_or_reference("linear_symmetric", args, codes, scale, None, bias, codes.shape[1])


def linear_lut4(input, packed, table, scale, group_size, bias):
    """quanta::linear_lut4 on CUDA: native decode or dequantize."""
    args = (input, packed, table, scale, group_size, bias)
    v.check_linear_lut4(*args)
    return _native_or_reference("linear_lut4", args, packed, scale, None, bias, group_size)


def linear_grouped(input, codes, scale, group_size, bias):
    """quanta::linear_grouped on CUDA: native decode or dequantize."""
    args = (input, codes, scale, group_size, bias)
    v.check_linear_grouped(*args)
    return _native_or_reference("linear_grouped", args, codes, scale, None, bias, group_size)


def int_mm_linear(
    input: torch.Tensor,
    input_scale: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """quanta::linear_int8 through ``torch._int_mm`` (exact int32 products; `codes.t()` is the
    column-major operand cuBLASLt takes, no copy), scaled as the reference scales them."""
    k = codes.shape[1]
    rows = input.reshape(-1, k).contiguous()
    m = rows.shape[0]
    if m < INT_MM_MIN_ROWS:
        rows = F.pad(rows, (0, 0, 0, INT_MM_MIN_ROWS - m))
    acc = torch._int_mm(rows, codes.t())[:m]
    return reference.scale_products(acc, input.shape, input_scale, scale, bias, dtype)


def scaled_mm_linear(
    input: torch.Tensor,
    input_scale: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """quanta::linear_float8 through ``torch._scaled_mm`` with row-wise scales: fp32 [M, 1] per
    token (a per-tensor input scale repeated) and [1, N] per channel; bias in dtype."""
    n, k = codes.shape
    rows = input.reshape(-1, k).contiguous()
    m = rows.shape[0]
    row_scale = input_scale.float().reshape(-1, 1).expand(m, 1).contiguous()
    out = torch._scaled_mm(
        rows,
        codes.t(),
        row_scale,
        scale.float().reshape(1, n),
        bias=None if bias is None else bias.to(dtype),
        out_dtype=dtype,
    )
    return out.reshape(*input.shape[:-1], n)


def _w8a8(op: str, torch_kernel, input, input_scale, codes, scale, bias, dtype):
    n, k = codes.shape
    code_dtype = input.dtype if codes.dtype == input.dtype else None  # torch's take one dtype
    case = Case(op, _rows(input), n, k, dtype, _arch(input.device), code_dtype=code_dtype)
    kernel = torch_kernel if choose(case) == "torch" else getattr(reference, op)
    with torch.no_grad():  # no gradient through W8A8 products, as on CPU (docs/ops.md)
        return kernel(input, input_scale, codes, scale, bias, dtype)


def linear_int8(input, input_scale, codes, scale, bias, dtype):
    """quanta::linear_int8 on CUDA: ``_int_mm`` where it fits, else the reference."""
    v.check_linear_int8(input, input_scale, codes, scale, bias, dtype)
    return _w8a8("linear_int8", int_mm_linear, input, input_scale, codes, scale, bias, dtype)


def linear_float8(input, input_scale, codes, scale, bias, dtype):
    """quanta::linear_float8 on CUDA: ``_scaled_mm`` where it fits, else the reference."""
    v.check_linear_float8(input, input_scale, codes, scale, bias, dtype)
    return _w8a8("linear_float8", scaled_mm_linear, input, input_scale, codes, scale, bias, dtype)


#: The CUDA kernel of each quanta linear op.
KERNELS = {
    "linear_affine": linear_affine,
    "linear_symmetric": linear_symmetric,
    "linear_lut4": linear_lut4,
    "linear_grouped": linear_grouped,
    "linear_int8": linear_int8,
    "linear_float8": linear_float8,
}


def register() -> None:
    """Register the CUDA kernels of the linear ops (they override the reference on CUDA)."""
    for name, kernel in KERNELS.items():
        torch.library.impl(f"quanta::{name}", "CUDA")(kernel)
