"""quanta.qcalib: calibration, QAT and weight optimizers."""

__version__ = "0.1.0"

__all__: list[str] = []
