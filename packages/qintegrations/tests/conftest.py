"""A tiny LLaMA built from a config (random weights), saved once per session as a plain folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub

TINY_LLAMA = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A float LlamaForCausalLM saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_LLAMA))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory) -> Path:
    """A float OPTForCausalLM (it has nn.LayerNorm, unlike LLaMA) saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=64, max_position_embeddings=64,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-opt")
    transformers.OPTForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def token_ids() -> torch.Tensor:
    return torch.randint(
        0, TINY_LLAMA["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1)
    )


# quantize() settings (of every "*proj" Linear) for each compressed-tensors scheme
EXPORT_SCHEMES = {
    "int4-group32": dict(weights="int4", group_size=32),
    "int4-group64-and-channel": dict(weights="int4", group_size=64),  # K=64 modules: per channel
    "int2-group32": dict(weights="int2", group_size=32),
    "int8": dict(weights="int8"),
    "fp8": dict(weights="fp8"),
    "w8a8-int8-dynamic": dict(weights="int8", activations="int8", activations_mode="dynamic"),
    "w8a8-int8-static": dict(weights="int8", activations="int8"),
    "w8a8-fp8-dynamic": dict(weights="fp8", activations="fp8", activations_mode="dynamic"),
    "w8a8-fp8-static": dict(weights="fp8", activations="fp8"),
    "w4a8-int8-dynamic": dict(
        weights="int4", group_size=32, activations="int8", activations_mode="dynamic"
    ),
}


@pytest.fixture(params=list(EXPORT_SCHEMES.values()), ids=list(EXPORT_SCHEMES))
def export_scheme(request) -> dict:
    """The quantize() settings of one compressed-tensors scheme."""
    return request.param


@pytest.fixture(scope="session")
def quantized_tiny_llama(tiny_llama_dir, token_ids):
    """A function: the tiny LLaMA with its "*proj" Linears quantized by quantize(**settings)
    (static activations calibrated on `token_ids`) and frozen; built once per settings (do not
    modify it)."""
    transformers = pytest.importorskip("transformers")
    from quanta.qcalib import Calibration
    from quanta.qmodules import freeze, quantize

    built = {}

    def build(**settings) -> torch.nn.Module:
        key = tuple(sorted(settings.items()))
        if key not in built:
            built[key] = quantized(**settings)
        return built[key]

    def quantized(**settings) -> torch.nn.Module:
        model = transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
        quantize(model, **{"include": "*proj", **settings})
        if settings.get("activations") and settings.get("activations_mode") != "dynamic":
            with torch.no_grad(), Calibration():
                model(token_ids)
        return freeze(model, progress=False)

    return build
