"""QuantizedModelForCausalLM: quantize a Transformers causal LM already in memory, save it with
save_pretrained, load it back with from_pretrained."""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoModelForCausalLM, PreTrainedModel

from quanta.qintegrations.transformers import QuantaConfig, QuantaHfQuantizer
from quanta.qmodules import freeze


class QuantizedModelForCausalLM:
    """A quanta-quantized Transformers causal LM; attributes and calls go to `model`."""

    def __init__(self, model: PreTrainedModel) -> None:
        if getattr(model, "quantization_method", None) != "quanta":
            raise ValueError(
                f"{type(model).__name__} is not quantized with quanta: use "
                "QuantizedModelForCausalLM.quantize(model, ...) or from_pretrained(folder)"
            )
        self.model = model

    @classmethod
    def quantize(
        cls,
        model: PreTrainedModel,
        weights: str = "int8",
        exclude: list[str] | None = None,
        **settings: Any,
    ) -> QuantizedModelForCausalLM:
        """Quantize and freeze `model` in place; `exclude` are fnmatch patterns (None:
        Transformers' default, the output embeddings); `settings` are QuantaConfig's others."""
        if not isinstance(model, PreTrainedModel):
            raise TypeError(
                f"model must be a transformers PreTrainedModel, got {type(model).__name__}"
            )
        if getattr(model, "is_quantized", False):
            raise ValueError(f"model is already quantized ({model.quantization_method})")
        config = QuantaConfig(weights=weights, modules_to_not_convert=exclude, **settings)
        quantizer = QuantaHfQuantizer(config, pre_quantized=False)
        quantizer.preprocess_model(model)  # swaps the modules, as from_pretrained does
        freeze(model)
        model.hf_quantizer = quantizer
        quantizer.postprocess_model(model)  # the config that save_pretrained writes
        return cls(model)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> QuantizedModelForCausalLM:
        """Load a folder that save_pretrained wrote for a quanta-quantized model."""
        return cls(AutoModelForCausalLM.from_pretrained(path, **kwargs))

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write the quantized checkpoint (the model's own save_pretrained)."""
        self.model.save_pretrained(path, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet: __init__ refused the model
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"
