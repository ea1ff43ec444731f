"""Transformers' static-cache `generate` with the forward compiled whole (fullgraph) on quanta's
modules, lm_head and embedding included: the fast CPU decoding of docs/benchmarks.md gives the
tokens that eager generation gives."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from quanta.qmodules import QEmbedding, freeze, quantize  # noqa: E402

NEW_TOKENS = 6


def generate(model, prompt: torch.Tensor) -> torch.Tensor:
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        cache_implementation="static",
        pad_token_id=0,
    )


@pytest.mark.parametrize(
    ("weights", "backend"),
    [
        ("int4", "eager"),  # the whole step captured in one graph (dynamo), fast
        pytest.param("nf4", "aot_eager", marks=pytest.mark.slow),  # through the fake kernels
        pytest.param("int8", "inductor", marks=pytest.mark.slow),  # as bench.generate runs
    ],
)
def test_compiled_static_cache_generate_gives_the_eager_tokens(tiny_llama_dir, weights, backend):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    quantize(model, weights, group_size=None if weights == "int8" else 32)
    freeze(model, progress=False)
    assert isinstance(model.model.embed_tokens, QEmbedding)
    prompt = torch.randint(
        0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        eager = generate(model, prompt)
        model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False, backend=backend)
        compiled = generate(model, prompt)
    assert torch.equal(compiled, eager)
