"""quanta: quantize PyTorch models (int2/int4/int8/fp8 weights) in one call, on CPU and GPU.

The only `quanta/__init__.py`: each layer (quanta.qtypes, quanta.qkernels, ...) is a portion of
the namespace. Re-exports are lazy (PEP 562), so `import quanta.qtypes` loads nothing above it.
"""

from __future__ import annotations

import importlib
import importlib.util
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
    "qnf4": "quanta.qtypes",
    "qfp4": "quanta.qtypes",
    "qmxfp4": "quanta.qtypes",
    "qnvfp4": "quanta.qtypes",
    "qmxfp8": "quanta.qtypes",
    "quantize": "quanta.qmodules",
    "freeze": "quanta.qmodules",
    "QLinear": "quanta.qmodules",
    "QConv1d": "quanta.qmodules",
    "QConv2d": "quanta.qmodules",
    "QEmbedding": "quanta.qmodules",
    "QTensor": "quanta.qmodules",
    "weight_memory": "quanta.qmodules",
    "Calibration": "quanta.qcalib",
    "awq": "quanta.qcalib",
    "save": "quanta.qio",
    "load": "quanta.qio",
    "QuantaConfig": "quanta.qintegrations.transformers",
    "QuantizedKVCache": "quanta.qintegrations.kv_cache",
    "export": "quanta.qintegrations.export",
    "load_compressed_tensors": "quanta.qintegrations.export",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from quanta.qcalib import Calibration, awq
    from quanta.qintegrations.export import export, load_compressed_tensors
    from quanta.qintegrations.kv_cache import QuantizedKVCache
    from quanta.qintegrations.transformers import QuantaConfig
    from quanta.qio import load, save
    from quanta.qmodules import (
        QConv1d,
        QConv2d,
        QEmbedding,
        QLinear,
        QTensor,
        freeze,
        quantize,
        weight_memory,
    )
    from quanta.qtypes import (
        QType,
        qfloat8,
        qfloat8_e4m3fn,
        qfloat8_e4m3fnuz,
        qfloat8_e5m2,
        qfp4,
        qint2,
        qint4,
        qint8,
        qmxfp4,
        qmxfp8,
        qnf4,
        qnvfp4,
    )


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quanta' has no attribute {name!r}")
    _add_integrations()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def _add_integrations() -> None:
    """Import quanta.qintegrations where installed (light: no torch, no transformers), so that
    quanta.quantize also handles Transformers' Conv1D once Transformers is imported."""
    if importlib.util.find_spec("quanta.qintegrations") is not None:
        importlib.import_module("quanta.qintegrations")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
