"""PEFT LoRA adapters train on top of quanta-quantized layers loaded by from_pretrained."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from quanta.qintegrations.transformers import QuantaConfig  # noqa: E402
from quanta.qmodules import QModuleMixin  # noqa: E402

STEPS = 20  # issue #7 acceptance: the loss falls over 20 steps
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _train_lora(model, batch: torch.Tensor, lr: float) -> list[float]:
    """Losses of STEPS AdamW steps of a rank-8 LoRA on `batch` (the labels are the inputs)."""
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, lora_dropout=0.0)
    lora = peft.get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=lr)
    lora.train()
    losses = []
    for _ in range(STEPS):
        loss = lora(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _check_trains(model, batch: torch.Tensor, lr: float) -> list[float]:
    layer = model.model.layers[0].self_attn.q_proj
    codes = layer.weight.codes.clone()
    losses = _train_lora(model, batch, lr)
    assert isinstance(layer, QModuleMixin) and torch.equal(layer.weight.codes, codes)  # frozen
    assert losses[-1] < 0.9 * losses[0], losses
    return losses


def test_lora_trains_on_an_int4_tiny_llama(tmp_path):
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=QuantaConfig(weights="int4")
    )
    batch = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    _check_trains(model, batch, lr=1e-2)  # random tokens: measured 5.56 -> 4.62


@pytest.mark.slow
def test_lora_trains_on_int4_smollm2(smollm2, lee_calibration_batches):
    from demo import models

    model = transformers.AutoModelForCausalLM.from_pretrained(
        models.cache_dir() / models.SMOLLM2_CACHE_NAME,
        quantization_config=QuantaConfig(weights="int4", modules_to_not_convert=["lm_head"]),
        dtype=torch.float32,
    )
    # one 128-token Lee window, learnt by heart: measured 3.58 -> 0.006 (about 3 min on 2 cores)
    _check_trains(model, lee_calibration_batches[0][:, :129], lr=1e-3)
