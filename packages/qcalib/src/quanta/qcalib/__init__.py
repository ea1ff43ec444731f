"""quanta.qcalib: calibration, QAT and weight optimizers."""

from quanta.qcalib.awq import awq
from quanta.qcalib.calibration import ActivationRange, Calibration
from quanta.qcalib.optimizers import GPTQ, HQQ, optimize_weights
from quanta.qcalib.rotation import rotate
from quanta.qcalib.smoothing import smooth
from quanta.qmodules import register_weight_optimizer

register_weight_optimizer("hqq", HQQ)  # quantize(..., optimizer="hqq") once qcalib is imported
register_weight_optimizer("gptq", GPTQ)

__version__ = "0.2.0"

__all__: list[str] = [
    "GPTQ",
    "HQQ",
    "ActivationRange",
    "Calibration",
    "awq",
    "optimize_weights",
    "rotate",
    "smooth",
]
