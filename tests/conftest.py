"""Session fixtures for the end-to-end tests: each real model loads once per pytest run.

The fixtures import the demo lazily, so collecting the other tests needs no real-model package;
tests/test_real_models.py skips itself when those packages are missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

LEE_TOKENS = 8192  # issue #2 acceptance: perplexity on 8,192 Lee tokens in 512-token windows
MINILM_SENTENCES = 512  # as when the models were chosen (a quantization sanity check)
MOBILENET_IMAGES = 128  # crops and flips of the skimage photos, as in the demo
CALIBRATION_WINDOWS = 4  # Lee windows after the evaluated tokens, for activation calibration


@dataclass(frozen=True)
class QuantizedLM:
    """What the tests need from one quantized SmolLM2: its perplexity and weight memory."""

    weights: str
    perplexity: float
    quantized_bytes: int
    float_bytes: int

    @property
    def memory_ratio(self) -> float:
        return self.quantized_bytes / self.float_bytes


@pytest.fixture(scope="session")
def smollm2() -> tuple[torch.nn.Module, object]:
    """SmolLM2-135M in fp32 and its tokenizer (the fp32 safetensors cache makes this 0.2 s)."""
    from demo import models

    return models.load_smollm2()


@pytest.fixture(scope="session")
def lee_token_ids(smollm2) -> torch.Tensor:
    from demo import data
    from quanta.qintegrations import metrics

    _, tokenizer = smollm2
    return metrics.lm_token_ids(tokenizer, data.lee_text(), LEE_TOKENS)


@pytest.fixture(scope="session")
def lee_calibration_batches(smollm2) -> list[torch.Tensor]:
    """BOS + 512-token windows of Lee text that follow the evaluated first LEE_TOKENS tokens."""
    from demo import data
    from quanta.qintegrations import metrics

    _, tokenizer = smollm2
    ids = metrics.lm_token_ids(tokenizer, data.lee_text(), LEE_TOKENS + 512 * CALIBRATION_WINDOWS)
    bos = torch.tensor([tokenizer.bos_token_id], dtype=ids.dtype)
    windows = ids[LEE_TOKENS:].split(512)
    return [torch.cat([bos, window])[None] for window in windows]


@pytest.fixture(scope="session")
def smollm2_fp32_perplexity(smollm2, lee_token_ids) -> float:
    from quanta.qintegrations import metrics

    model, tokenizer = smollm2
    return metrics.perplexity(model, lee_token_ids, tokenizer.bos_token_id)


@pytest.fixture(scope="session")
def smollm2_quantized(smollm2, lee_token_ids) -> Callable[[str], QuantizedLM]:
    """weights -> QuantizedLM, computed once per weight type from a fresh copy of fp32."""
    from demo import run
    from quanta.qintegrations import metrics
    from quanta.qmodules import weight_memory

    model, tokenizer = smollm2
    results: dict[str, QuantizedLM] = {}

    def get(weights: str) -> QuantizedLM:
        if weights not in results:
            qmodel = run.quantized_copy(model, weights, exclude="lm_head", progress=False)
            memory = weight_memory(qmodel)
            perplexity = metrics.perplexity(qmodel, lee_token_ids, tokenizer.bos_token_id)
            results[weights] = QuantizedLM(weights, perplexity, *memory)
        return results[weights]

    return get


@pytest.fixture(scope="session")
def minilm() -> tuple[torch.nn.Module, object, list[str], torch.Tensor]:
    """all-MiniLM-L6-v2, its tokenizer, Lee sentences and their fp32 embeddings."""
    from demo import data, models
    from quanta.qintegrations import metrics

    model, tokenizer = models.load_minilm()
    sentences = data.lee_sentences(MINILM_SENTENCES)
    return model, tokenizer, sentences, metrics.sentence_embeddings(model, tokenizer, sentences)


@pytest.fixture(scope="session")
def mobilenet() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """MobileNetV2, the photo crops and the fp32 logits on them."""
    from demo import data, models
    from quanta.qintegrations import metrics

    model = models.load_mobilenet_v2()
    images = data.photo_batch(MOBILENET_IMAGES)
    return model, images, metrics.classify(model, images)
