"""quanta.qmodules: quantized tensors and modules, quantize() and freeze()."""

from quanta.qmodules.config import ACTIVATION_MODES, USER_FIELDS, ModuleConfig, to_module_config
from quanta.qmodules.freeze import freeze
from quanta.qmodules.memory import WeightMemory, quantized_weight_bytes, weight_memory
from quanta.qmodules.modules import (
    QActivationMixin,
    QConv1d,
    QConv2d,
    QEmbedding,
    QLayerNorm,
    QLinear,
    QModuleMixin,
    apply_module_config,
    float_activations,
    hadamard_block_size,
    observe_activations,
    quantized_base_for,
    register_quantized_class,
)
from quanta.qmodules.optimizers import (
    AbsmaxOptimizer,
    MinmaxOptimizer,
    WeightOptimizer,
    register_weight_optimizer,
    to_weight_optimizer,
)
from quanta.qmodules.progress import progress_bar
from quanta.qmodules.quantize import quantize, unmatched_patterns
from quanta.qmodules.tensors import (
    PartSpec,
    QActivationTensor,
    QBitsTensor,
    QBytesTensor,
    QDoubleQuantLookupTensor,
    QLookupTensor,
    QMicroscaledTensor,
    QNVFP4Tensor,
    QTensor,
    QWeightTensor,
    WeightParts,
    layout_for,
    register_layout,
    stored_part_names,
)

__version__ = "0.2.0"

__all__ = [
    "ACTIVATION_MODES",
    "USER_FIELDS",
    "AbsmaxOptimizer",
    "MinmaxOptimizer",
    "ModuleConfig",
    "PartSpec",
    "QActivationMixin",
    "QActivationTensor",
    "QBitsTensor",
    "QBytesTensor",
    "QConv1d",
    "QConv2d",
    "QDoubleQuantLookupTensor",
    "QEmbedding",
    "QLayerNorm",
    "QLinear",
    "QLookupTensor",
    "QMicroscaledTensor",
    "QModuleMixin",
    "QNVFP4Tensor",
    "QTensor",
    "QWeightTensor",
    "WeightMemory",
    "WeightOptimizer",
    "WeightParts",
    "apply_module_config",
    "float_activations",
    "freeze",
    "hadamard_block_size",
    "layout_for",
    "observe_activations",
    "progress_bar",
    "quantize",
    "quantized_base_for",
    "quantized_weight_bytes",
    "register_layout",
    "register_quantized_class",
    "register_weight_optimizer",
    "stored_part_names",
    "to_module_config",
    "to_weight_optimizer",
    "unmatched_patterns",
    "weight_memory",
]
