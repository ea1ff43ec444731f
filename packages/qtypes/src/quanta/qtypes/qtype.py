"""The qtype registry: what each quantized type stores and which values it can hold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The storage layouts a qtype's codes live in; quanta.qmodules has one tensor class for each.
PACKED_AFFINE = "packed_affine"  # unsigned codes packed into uint8, scale and zero point a group
SYMMETRIC = "symmetric"  # one code a byte (int8 or float8), a symmetric scale
LOOKUP_TABLE = "lookup_table"  # 4-bit indices into a 16-value table, an absmax scale a block
LOOKUP_TABLE_DOUBLE = "lookup_table_double"  # the same, its scales quantized to int8 (QLoRA)
MICROSCALED = "microscaled"  # OCP MX: float codes and a power-of-two (e8m0) scale per 32
NVFP4 = "nvfp4"  # e2m1 codes, an e4m3 scale per 16 and one float32 scale per tensor


@dataclass(frozen=True)
class QType:
    """A quantized data type: its bit width, code range, the torch dtype its codes live in and
    the name of its storage layout.

    2- and 4-bit codes are unsigned (affine, with a zero point) and packed into uint8 storage;
    8-bit codes are signed integers or float8 values scaled symmetrically. The 4-bit float
    formats (nf4, fp4, mxfp4, nvfp4) store indices into `table`, the values their 16 codes
    stand for; the microscaled ones (mxfp4, nvfp4, mxfp8) fix the columns a scale covers
    (`block_size`) and store that scale in `scale_dtype`.
    """

    name: str
    bits: int
    is_floating_point: bool
    dtype: torch.dtype
    qmin: float
    qmax: float
    layout: str
    table: tuple[float, ...] | None = None
    block_size: int | None = None
    scale_dtype: torch.dtype | None = None

    def __repr__(self) -> str:
        return f"quanta.{self.name}"


def _float8(name: str, dtype: torch.dtype) -> QType:
    info = torch.finfo(dtype)
    return QType(name, 8, True, dtype, float(info.min), float(info.max), SYMMETRIC)


# bitsandbytes' NormalFloat4 (QLoRA, arXiv:2305.14314): quantiles of N(0, 1) scaled to [-1, 1],
# with an exact zero; the float32 values of bitsandbytes.functional.get_4bit_type("nf4").
NF4_TABLE = (
    *(-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453),
    *(-0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0),
    *(0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224),
    *(0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0),
)
# bitsandbytes' FP4 (its kernels' dDequantizeFP4Tree): code bit 3 is the sign; 1/192 is its
# subnormal. Largest magnitude 1, so the absmax scale maps each block onto [-1, 1].
_FP4_MAGNITUDES = (0.0, 1 / 192, 2 / 3, 1.0, 1 / 3, 1 / 2, 1 / 6, 1 / 4)
FP4_TABLE = (*_FP4_MAGNITUDES, *(-value for value in _FP4_MAGNITUDES))
# OCP MX v1.0 FP4 E2M1 (section 5.3.3): code bit 3 is the sign, 0b0001 the subnormal 0.5.
_E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_TABLE = (*_E2M1_MAGNITUDES, *(-value for value in _E2M1_MAGNITUDES))
MX_BLOCK_SIZE = 32  # OCP MX v1.0: every MX format shares one scale per 32 elements
NVFP4_BLOCK_SIZE = 16


def _table4(name: str, table: tuple[float, ...], layout: str, **fixed: object) -> QType:
    return QType(name, 4, True, torch.uint8, min(table), max(table), layout, table, **fixed)


qint2 = QType("qint2", 2, False, torch.uint8, 0, 3, PACKED_AFFINE)
qint4 = QType("qint4", 4, False, torch.uint8, 0, 15, PACKED_AFFINE)
qint8 = QType("qint8", 8, False, torch.int8, -128, 127, SYMMETRIC)
qfloat8_e4m3fn = _float8("qfloat8_e4m3fn", torch.float8_e4m3fn)
qfloat8_e4m3fnuz = _float8("qfloat8_e4m3fnuz", torch.float8_e4m3fnuz)
qfloat8_e5m2 = _float8("qfloat8_e5m2", torch.float8_e5m2)
qfloat8 = qfloat8_e4m3fn
qnf4 = _table4("qnf4", NF4_TABLE, LOOKUP_TABLE)
qfp4 = _table4("qfp4", FP4_TABLE, LOOKUP_TABLE)
qnf4_dq = _table4("qnf4_dq", NF4_TABLE, LOOKUP_TABLE_DOUBLE)
qfp4_dq = _table4("qfp4_dq", FP4_TABLE, LOOKUP_TABLE_DOUBLE)
qmxfp4 = _table4(
    "qmxfp4", E2M1_TABLE, MICROSCALED, block_size=MX_BLOCK_SIZE, scale_dtype=torch.float8_e8m0fnu
)
qnvfp4 = _table4(
    "qnvfp4", E2M1_TABLE, NVFP4, block_size=NVFP4_BLOCK_SIZE, scale_dtype=torch.float8_e4m3fn
)
qmxfp8 = QType(
    "qmxfp8",
    8,
    True,
    torch.float8_e4m3fn,
    -448.0,
    448.0,
    MICROSCALED,
    block_size=MX_BLOCK_SIZE,
    scale_dtype=torch.float8_e8m0fnu,
)

_INTEGERS = (qint2, qint4, qint8)
_FLOAT8 = (qfloat8_e4m3fn, qfloat8_e4m3fnuz, qfloat8_e5m2)
_BLOCK_FORMATS = (qnf4, qfp4, qnf4_dq, qfp4_dq, qmxfp4, qnvfp4, qmxfp8)
_QTYPES = {q.name: q for q in (*_INTEGERS, *_FLOAT8, *_BLOCK_FORMATS)}
_ALIASES = {
    "nf4": qnf4,
    "fp4": qfp4,
    "nf4_dq": qnf4_dq,
    "fp4_dq": qfp4_dq,
    "mxfp4": qmxfp4,
    "nvfp4": qnvfp4,
    "mxfp8": qmxfp8,
    "int2": qint2,
    "int4": qint4,
    "int8": qint8,
    "qfloat8": qfloat8,
    "float8": qfloat8,
    "fp8": qfloat8,
    "float8_e4m3fn": qfloat8_e4m3fn,
    "fp8_e4m3fn": qfloat8_e4m3fn,
    "e4m3": qfloat8_e4m3fn,
    "float8_e4m3fnuz": qfloat8_e4m3fnuz,
    "fp8_e4m3fnuz": qfloat8_e4m3fnuz,
    "float8_e5m2": qfloat8_e5m2,
    "fp8_e5m2": qfloat8_e5m2,
    "e5m2": qfloat8_e5m2,
}


def qtype_names() -> list[str]:
    """Every name and alias that `to_qtype` accepts."""
    return sorted({*_QTYPES, *_ALIASES})


def to_qtype(value: QType | str, argument: str = "qtype") -> QType:
    """Return the QType for a QType or one of its names ("int4", "qint4", "fp8", ...).

    `argument` names the caller's parameter in the error message.
    """
    if isinstance(value, QType):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"{argument} must be a quanta QType or one of {qtype_names()}, "
            f"got {type(value).__name__}"
        )
    key = value.lower()
    qtype = _QTYPES.get(key) or _ALIASES.get(key)
    if qtype is None:
        raise ValueError(f"{argument}={value!r} is not a known qtype; valid: {qtype_names()}")
    return qtype
