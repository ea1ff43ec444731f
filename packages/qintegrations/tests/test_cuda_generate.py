"""Transformers on a CUDA device: from_pretrained(..., device_map="cuda") of the tiny LLaMA
quantized by QuantaConfig, then generate, on the CUDA kernels (qkernels.cuda_dispatch)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from quanta.qintegrations.transformers import QuantaConfig  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# logits of the quantized model on CUDA against the same quantized model on CPU: bfloat16
# kernels summing in other orders (tinygemm, cuBLAS) on two layers.
LOGITS_RTOL = 3e-2


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_from_pretrained_on_cuda_then_generate(tiny_llama_dir, token_ids, weights):
    kwargs = {"quantization_config": QuantaConfig(weights=weights), "dtype": torch.bfloat16}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, device_map="cuda", **kwargs
    )
    on_cpu = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, **kwargs)
    up_proj = model.model.layers[0].mlp.up_proj.weight
    assert up_proj.device.type == "cuda"
    if weights == "int4":
        assert up_proj.int4pack_weight is not None  # tinygemm's layout, built on arrival
    with torch.inference_mode():
        logits = model(token_ids.cuda()).logits.float().cpu()
        expected = on_cpu(token_ids).logits.float()
        out = model.generate(token_ids.cuda(), max_new_tokens=8, do_sample=False)
    assert float((logits - expected).norm() / expected.norm()) < LOGITS_RTOL
    assert out.shape == (token_ids.shape[0], token_ids.shape[1] + 8)
