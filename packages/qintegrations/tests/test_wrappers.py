"""QuantizedModelForCausalLM on a tiny LLaMA: quantize in memory, save, load back."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from quanta.qintegrations.wrappers import QuantizedModelForCausalLM  # noqa: E402
from quanta.qmodules import QModuleMixin, freeze, quantize  # noqa: E402


@torch.inference_mode()
def _logits(model, token_ids):
    return model(token_ids).logits


def _float_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def test_quantize_save_from_pretrained(tiny_llama_dir, token_ids, tmp_path):
    wrapped = QuantizedModelForCausalLM.quantize(
        _float_model(tiny_llama_dir), weights="int4", exclude=["lm_head", "*.o_proj"]
    )
    reference = freeze(
        quantize(_float_model(tiny_llama_dir), "int4", exclude=["lm_head", "*.o_proj"])
    )
    expected = _logits(reference, token_ids)
    assert torch.equal(_logits(wrapped, token_ids), expected)
    assert not isinstance(wrapped.model.model.layers[0].self_attn.o_proj, QModuleMixin)

    wrapped.save_pretrained(tmp_path)
    loaded = QuantizedModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(_logits(loaded, token_ids), expected)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(plain, token_ids), expected)
    assert loaded.generate(token_ids[:1], max_new_tokens=3, do_sample=False).shape[1] == 27


def test_quantize_with_activations_and_default_exclusions(tiny_llama_dir, token_ids, tmp_path):
    wrapped = QuantizedModelForCausalLM.quantize(
        _float_model(tiny_llama_dir), weights="int8", activations="int8", activations_mode="dynamic"
    )
    assert not isinstance(wrapped.lm_head, QModuleMixin)  # Transformers' default exclusion
    wrapped.save_pretrained(tmp_path)
    loaded = QuantizedModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(_logits(loaded, token_ids), _logits(wrapped, token_ids))


def test_refusals(tiny_llama_dir):
    with pytest.raises(TypeError, match="PreTrainedModel"):
        QuantizedModelForCausalLM.quantize(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="weights='int3'"):
        QuantizedModelForCausalLM.quantize(_float_model(tiny_llama_dir), weights="int3")
    with pytest.raises(ValueError, match="not quantized with quanta"):
        QuantizedModelForCausalLM.from_pretrained(tiny_llama_dir)
    wrapped = QuantizedModelForCausalLM.quantize(_float_model(tiny_llama_dir), weights="int8")
    with pytest.raises(ValueError, match="already quantized"):
        QuantizedModelForCausalLM.quantize(wrapped.model)


def test_wrap_a_model_quantized_and_calibrated_by_hand(tiny_opt_dir, token_ids, tmp_path):
    from quanta.qcalib import Calibration

    model = quantize(_float_model(tiny_opt_dir), "int8", activations="int8", exclude="lm_head")
    with torch.inference_mode(), Calibration(momentum=0.9):
        model(token_ids)
    norm = model.model.decoder.layers[0].final_layer_norm
    scale = norm.output_scale.item()
    wrapped = QuantizedModelForCausalLM.quantize(model, weights="int8", activations="int8")
    assert norm.output_scale.item() == scale != 1.0  # calibration kept
    wrapped.save_pretrained(tmp_path)
    loaded = QuantizedModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(_logits(loaded, token_ids), _logits(wrapped, token_ids))
