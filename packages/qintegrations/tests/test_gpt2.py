"""GPT-2 (Transformers' Conv1D, tied embeddings) built from a small config with random weights:
quantize, freeze, qio save/load, and from_pretrained / save_pretrained with QuantaConfig."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from quanta.qintegrations.conv1d import QConv1D  # noqa: E402
from quanta.qintegrations.transformers import QuantaConfig  # noqa: E402
from quanta.qio import load, save  # noqa: E402
from quanta.qmodules import QEmbedding, QLinear, QModuleMixin, freeze, quantize  # noqa: E402

LAYERS = 2
GPT2 = dict(
    n_layer=LAYERS, n_embd=64, n_head=4, vocab_size=512, n_positions=32,
    bos_token_id=0, eos_token_id=0,
)  # fmt: skip
# ‖logits − float logits‖ / ‖float logits‖ on this config (measured 0.010, 0.036, 0.15):
# per output feature scales (8-bit) and groups of 64 (int4) over every matrix of the model
MAX_LOGITS_ERROR = {"int8": 0.02, "fp8": 0.07, "int4": 0.25}


def _gpt2(**changes) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(**{**GPT2, **changes})
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def token_ids() -> torch.Tensor:
    return torch.randint(0, GPT2["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))


@torch.inference_mode()
def _logits(model, token_ids):
    return model(token_ids).logits


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def _quantized_types(model) -> list[str]:
    return sorted(type(m).__name__ for m in model.modules() if isinstance(m, QModuleMixin))


@pytest.mark.parametrize(
    "weights", ["int4", "int8", pytest.param("fp8", marks=pytest.mark.slow)]
)  # fp8's layout is int8's; its round trip below runs by default
def test_every_conv1d_and_embedding_is_quantized(weights, token_ids):
    model = _gpt2()
    expected = _logits(model, token_ids)
    freeze(quantize(model, weights=weights))
    # per block: c_attn, c_proj (attention), c_fc, c_proj (MLP); wte, wpe; lm_head
    assert _quantized_types(model) == ["QConv1D"] * 4 * LAYERS + ["QEmbedding"] * 2 + ["QLinear"]
    attention = model.transformer.h[0].attn.c_attn
    assert type(attention) is QConv1D and attention.weight.shape == (3 * 64, 64)  # [out, in]
    assert model.transformer.wte.stored_weight is model.lm_head.stored_weight  # tied: one tensor
    error = _relative_error(_logits(model, token_ids), expected)
    assert error < MAX_LOGITS_ERROR[weights]


@pytest.mark.parametrize("weights", ["int4", "fp8"])  # both layouts (packed, 8-bit)
def test_qio_save_and_load_are_bit_identical(weights, token_ids, tmp_path):
    from safetensors import safe_open

    model = freeze(quantize(_gpt2(), weights=weights))
    save(model, tmp_path, progress=False)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as file:
        keys = set(file.keys())
    assert ("lm_head.weight.codes" in keys) != ("transformer.wte.weight.codes" in keys)  # once
    with torch.device("meta"):
        skeleton = transformers.GPT2LMHeadModel(model.config)
    loaded = load(tmp_path, skeleton, progress=False).eval()
    head, embedding = loaded.lm_head.weight, loaded.transformer.wte.weight
    assert head.codes.data_ptr() == embedding.codes.data_ptr()  # reloaded tied
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert torch.equal(_logits(loaded, token_ids), _logits(model, token_ids))


def test_dynamic_activations_on_conv1d(token_ids):
    model = _gpt2()
    expected = _logits(model, token_ids)
    quantize(model, weights="int8", activations="int8", activations_mode="dynamic")
    assert model.transformer.h[0].mlp.c_fc.qconfig.activations is not None
    assert model.transformer.wte.qconfig.activations is None  # embeddings: weight-only
    assert _relative_error(_logits(model, token_ids), expected) < 2 * MAX_LOGITS_ERROR["int8"]


def test_qat_gradient_reaches_the_conv1d_float_weight():
    conv = quantize(torch.nn.Sequential(transformers.pytorch_utils.Conv1D(8, 32)), weights="int8")
    conv(torch.randn(3, 32)).sum().backward()
    assert conv[0].float_weight.grad.shape == (32, 8)  # Conv1D's own [in, out]


@pytest.mark.parametrize("tie", [False, True])
def test_from_pretrained_save_pretrained_round_trip(tie, token_ids, tmp_path):
    _gpt2(tie_word_embeddings=tie).save_pretrained(tmp_path / "float")
    model = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "float", quantization_config=QuantaConfig(weights="int4")
    ).eval()
    types = _quantized_types(model)
    assert types.count("QConv1D") == 4 * LAYERS
    # Transformers' default leaves lm_head float; a tied embedding stays float with it
    assert types.count("QEmbedding") == (1 if tie else 2)
    assert type(model.transformer.wpe) is QEmbedding and QLinear.__name__ not in types
    assert (type(model.transformer.wte) is QEmbedding) is not tie
    model.save_pretrained(tmp_path / "saved")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "saved").eval()
    assert _quantized_types(reloaded) == types
    assert torch.equal(_logits(reloaded, token_ids), _logits(model, token_ids))


@pytest.mark.slow  # a fresh interpreter importing torch and transformers
def test_conv1d_is_registered_when_transformers_is_imported_after_quanta():
    code = (
        "import quanta\n"
        "quanta.quantize  # the meta package's API brings quanta.qintegrations along\n"
        "from transformers.pytorch_utils import Conv1D\n"
        "from quanta.qmodules import quantized_base_for\n"
        "print(quantized_base_for(Conv1D).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "QConv1D"


def test_deepcopy_of_a_frozen_gpt2(token_ids):
    model = freeze(quantize(_gpt2(), weights="int4"))
    copied = copy.deepcopy(model)
    assert copied.transformer.wte.stored_weight is copied.lm_head.stored_weight
    assert torch.equal(_logits(copied, token_ids), _logits(model, token_ids))


def test_weight_memory_before_freeze_is_what_freeze_stores():
    from quanta.qmodules import weight_memory

    model = quantize(_gpt2(), weights="int8")  # one scale per output feature: 192, not 64
    before = weight_memory(model)
    assert weight_memory(freeze(model)) == before
