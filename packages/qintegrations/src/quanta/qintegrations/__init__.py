"""quanta.qintegrations: Transformers and Diffusers integrations and the `quanta` CLI."""

import importlib

from quanta.qintegrations.post_import import when_imported

__version__ = "0.2.0"

__all__ = ["__version__"]

# QuantaConfig's quant_method "quanta" is registered the moment Transformers' (or Diffusers')
# quantizers load.
when_imported(
    "transformers.quantizers.auto",
    lambda: importlib.import_module("quanta.qintegrations.transformers"),
)
when_imported(
    "diffusers.quantizers.auto",
    lambda: importlib.import_module("quanta.qintegrations.diffusers"),
)
# Transformers' Conv1D (GPT-2) is quantized by quanta.quantize once its module is imported.
when_imported(
    "transformers.pytorch_utils",
    lambda: importlib.import_module("quanta.qintegrations.conv1d"),
)
