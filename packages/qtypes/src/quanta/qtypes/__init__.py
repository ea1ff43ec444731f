"""quanta.qtypes: quantized data types and the scale math that maps floats onto them."""

from quanta.qtypes.qtype import (
    PACKED_AFFINE,
    SYMMETRIC,
    QType,
    qfloat8,
    qfloat8_e4m3fn,
    qfloat8_e4m3fnuz,
    qfloat8_e5m2,
    qint2,
    qint4,
    qint8,
    qtype_names,
    to_qtype,
)
from quanta.qtypes.scales import (
    absmax_scale,
    least_error_candidate,
    minmax_affine_params,
    symmetric_scale,
)

__version__ = "0.2.0"

__all__ = [
    "PACKED_AFFINE",
    "SYMMETRIC",
    "QType",
    "absmax_scale",
    "least_error_candidate",
    "minmax_affine_params",
    "qfloat8",
    "qfloat8_e4m3fn",
    "qfloat8_e4m3fnuz",
    "qfloat8_e5m2",
    "qint2",
    "qint4",
    "qint8",
    "qtype_names",
    "symmetric_scale",
    "to_qtype",
]
