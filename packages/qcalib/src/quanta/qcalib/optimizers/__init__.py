"""Weight optimizers of quanta.qcalib: HQQ (data free, or weighted by calibration inputs) and
GPTQ (Hessian-based, from calibration inputs), for `quantize(..., optimizer=...)`."""

from quanta.qcalib.optimizers.gptq import GPTQ, gptq_quantize
from quanta.qcalib.optimizers.hqq import HQQ, hqq_params
from quanta.qcalib.optimizers.statistics import (
    CalibratedOptimizer,
    InputStatistics,
    optimize_weights,
)

__all__ = [
    "GPTQ",
    "HQQ",
    "CalibratedOptimizer",
    "InputStatistics",
    "gptq_quantize",
    "hqq_params",
    "optimize_weights",
]
