"""quanta: quantize PyTorch models (int2/int4/int8/fp8 weights) in one call, on CPU and GPU.

The only `quanta/__init__.py`: each layer (quanta.qtypes, quanta.qkernels, ...) is a portion of
the namespace. Re-exports are lazy (PEP 562), so `import quanta.qtypes` loads nothing above it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__path__ = __import__("pkgutil").extend_path(__path__, __name__)
__version__ = "0.2.0"

_EXPORTS = {
    "QType": "quanta.qtypes",
    "qint2": "quanta.qtypes",
    "qint4": "quanta.qtypes",
    "qint8": "quanta.qtypes",
    "qfloat8": "quanta.qtypes",
    "qfloat8_e4m3fn": "quanta.qtypes",
    "qfloat8_e4m3fnuz": "quanta.qtypes",
    "qfloat8_e5m2": "quanta.qtypes",
    "quantize": "quanta.qmodules",
    "freeze": "quanta.qmodules",
    "QLinear": "quanta.qmodules",
    "QConv2d": "quanta.qmodules",
    "QTensor": "quanta.qmodules",
    "weight_memory": "quanta.qmodules",
    "Calibration": "quanta.qcalib",
    "awq": "quanta.qcalib",
    "save": "quanta.qio",
    "load": "quanta.qio",
    "QuantaConfig": "quanta.qintegrations.transformers",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from quanta.qcalib import Calibration, awq
    from quanta.qintegrations.transformers import QuantaConfig
    from quanta.qio import load, save
    from quanta.qmodules import QConv2d, QLinear, QTensor, freeze, quantize, weight_memory
    from quanta.qtypes import (
        QType,
        qfloat8,
        qfloat8_e4m3fn,
        qfloat8_e4m3fnuz,
        qfloat8_e5m2,
        qint2,
        qint4,
        qint8,
    )


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quanta' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
