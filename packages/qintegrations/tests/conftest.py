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
