"""The qtype registry: what each quantized type stores and which values it can hold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The storage layouts a qtype's codes live in; quanta.qmodules has one tensor class for each.
PACKED_AFFINE = "packed_affine"  # unsigned codes packed into uint8, scale and zero point a group
SYMMETRIC = "symmetric"  # one code a byte (int8 or float8), a symmetric scale


@dataclass(frozen=True)
class QType:
    """A quantized data type: its bit width, code range, the torch dtype its codes live in and
    the name of its storage layout.

    2- and 4-bit codes are unsigned (affine, with a zero point) and packed into uint8 storage;
    8-bit codes are signed integers or float8 values scaled symmetrically.
    """

    name: str
    bits: int
    is_floating_point: bool
    dtype: torch.dtype
    qmin: float
    qmax: float
    layout: str

    def __repr__(self) -> str:
        return f"quanta.{self.name}"


def _float8(name: str, dtype: torch.dtype) -> QType:
    info = torch.finfo(dtype)
    return QType(name, 8, True, dtype, float(info.min), float(info.max), SYMMETRIC)


qint2 = QType("qint2", 2, False, torch.uint8, 0, 3, PACKED_AFFINE)
qint4 = QType("qint4", 4, False, torch.uint8, 0, 15, PACKED_AFFINE)
qint8 = QType("qint8", 8, False, torch.int8, -128, 127, SYMMETRIC)
qfloat8_e4m3fn = _float8("qfloat8_e4m3fn", torch.float8_e4m3fn)
qfloat8_e4m3fnuz = _float8("qfloat8_e4m3fnuz", torch.float8_e4m3fnuz)
qfloat8_e5m2 = _float8("qfloat8_e5m2", torch.float8_e5m2)
qfloat8 = qfloat8_e4m3fn

_QTYPES = {q.name: q for q in (qint2, qint4, qint8, qfloat8_e4m3fn, qfloat8_e4m3fnuz, qfloat8_e5m2)}
_ALIASES = {
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
