"""Accuracy metrics of a quantized model against its fp32 original; torch only.

`quanta eval`, the repository's demo and its end-to-end tests all use these, so their numbers
are the same numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _logits(output: object) -> torch.Tensor:
    """The logits of a model output: a transformers ModelOutput or a plain tensor."""
    return output.logits if hasattr(output, "logits") else output


@torch.inference_mode()
def perplexity(
    model: nn.Module, token_ids: torch.Tensor, bos_token_id: int | None, window: int = 512
) -> float:
    """Perplexity of a causal LM on `token_ids` [n], read in independent windows.

    Each window of `window` tokens is prefixed with `bos_token_id` and scored on all of its
    tokens, so every token counts once and windows share nothing (the protocol of
    docs/accuracy.md). With `bos_token_id=None` nothing is prefixed: a window's first token is
    context only. `prefix_token_id(tokenizer)` gives the usual choice for a tokenizer.
    """
    prefix = [] if bos_token_id is None else [bos_token_id]
    total_nll, count = 0.0, 0
    for start in range(0, token_ids.numel(), window):
        prefix_ids = torch.tensor(prefix, dtype=token_ids.dtype)
        chunk = torch.cat([prefix_ids, token_ids[start : start + window]])[None]
        if chunk.shape[1] < 2:  # a last window of one token, without a prefix: nothing to score
            continue
        log_probs = torch.log_softmax(_logits(model(chunk))[0, :-1].float(), dim=-1)
        total_nll -= log_probs.gather(1, chunk[0, 1:, None]).sum().item()
        count += chunk.shape[1] - 1
    if count == 0:
        raise ValueError(f"perplexity needs tokens to score, got {token_ids.numel()} token ids")
    mean_nll = total_nll / count
    return math.exp(mean_nll) if mean_nll < 700 else math.inf  # exp(710) overflows a double


def prefix_token_id(tokenizer: object) -> int | None:
    """The token that starts each perplexity window: BOS, else EOS (Qwen2 and others have no BOS
    and end each document with EOS; lm-evaluation-harness makes the same choice), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_token_id", None)


def lm_token_ids(tokenizer: object, text: str, n_tokens: int) -> torch.Tensor:
    """The first `n_tokens` token ids of `text`, without special tokens."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    return ids[:n_tokens]


@torch.inference_mode()
def sentence_embeddings(
    model: nn.Module, tokenizer: object, texts: list[str], batch_size: int = 32
) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings [len(texts), hidden] of a sentence encoder.

    This is the pooling of sentence-transformers' all-MiniLM-L6-v2 (mean over real tokens).
    """
    batches = []
    for start in range(0, len(texts), batch_size):
        inputs = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=256,
            return_tensors="pt",
        )
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"][..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        batches.append(nn.functional.normalize(pooled.float(), dim=-1))
    return torch.cat(batches)


def mean_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows of two [n, d] embedding matrices."""
    return (
        nn.functional.cosine_similarity(reference.float(), candidate.float(), dim=-1).mean().item()
    )


@torch.inference_mode()
def classify(model: nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Logits [n, classes] of an image classifier on `images` [n, 3, H, W], in batches."""
    return torch.cat([model(batch).float() for batch in images.split(batch_size)])


def top1_agreement(reference_logits: torch.Tensor, candidate_logits: torch.Tensor) -> float:
    """Fraction of inputs on which two classifiers predict the same top-1 class."""
    same = reference_logits.argmax(-1) == candidate_logits.argmax(-1)
    return same.float().mean().item()
