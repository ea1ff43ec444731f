"""QuantizedKVCache on a tiny LLaMA (random weights): generate, accuracy, bytes, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from quanta.qintegrations.kv_cache import QuantizedKVCache  # noqa: E402

# conftest's tiny Llama: hidden 64 over 4 heads, head_dim 16, 2 KV heads, 2 layers
HEAD_DIM, KV_HEADS, LAYERS = 16, 2, 2
PROMPT, NEW_TOKENS, CHUNK = 8, 32, 8
# Largest |logit difference| against the float cache, teacher-forced, with every past token
# quantized, over logits within ±0.7 (measured: int4 0.014, fp8 0.0044, int8 0.0013): 3x that.
LOGIT_TOLERANCE = {"int4": 0.04, "fp8": 0.013, "int8": 0.004}


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(
        0, 256, (2, PROMPT + NEW_TOKENS), generator=torch.Generator().manual_seed(1)
    )


@pytest.fixture(scope="module")
def float_logits(model, tokens) -> torch.Tensor:
    return chunked_logits(model, tokens, transformers.DynamicCache(config=model.config))


@torch.inference_mode()
def chunked_logits(model, tokens, cache) -> torch.Tensor:
    """Logits of `tokens` fed CHUNK at a time through `cache` (teacher forcing)."""
    steps = [
        model(tokens[:, i : i + CHUNK], cache=cache).logits
        for i in range(0, tokens.shape[1], CHUNK)
    ]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("qtype", sorted(LOGIT_TOLERANCE))
def test_logits_with_quantized_past_match_float(model, tokens, float_logits, qtype):
    cache = QuantizedKVCache(model.config, qtype=qtype, group_size=8, residual_length=0)
    logits = chunked_logits(model, tokens, cache)
    assert cache.get_seq_length() == tokens.shape[1]
    assert (logits - float_logits).abs().max() <= LOGIT_TOLERANCE[qtype]


def test_generate_with_int8_cache_gives_the_float_tokens(model, tokens):
    prompt = tokens[:, :PROMPT]
    settings = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    expected = model.generate(prompt, **settings)
    cache = QuantizedKVCache(model.config, qtype="int8", group_size=8, residual_length=4)
    assert torch.equal(model.generate(prompt, cache=cache, **settings), expected)
    # everything but the float window and an unfilled key group was quantized
    assert cache.layers[0].keys.shape[-2] < 4 + 8


def test_a_window_longer_than_the_text_is_the_float_cache(model, tokens, float_logits):
    cache = QuantizedKVCache(model.config, group_size=8, residual_length=tokens.shape[1])
    assert torch.equal(chunked_logits(model, tokens, cache), float_logits)
    assert cache.layers[0].quantized_keys.stored_bytes() == 0


def test_stored_bytes_count_codes_scales_zero_points_and_window(model, tokens):
    cache = QuantizedKVCache(model.config, qtype="int4", group_size=8, residual_length=4)
    chunked_logits(model, tokens[:, :36], cache)  # 36 tokens: 32 quantized, 4 float
    batch, float_bytes = tokens.shape[0], 4
    # per layer, head and token: keys 16 channels and values 16 channels, each 4-bit codes
    # (8 bytes) plus, per group of 8, an fp32 scale and a uint8 zero point (2 x 5 bytes)
    quantized = 32 * (8 + 2 * 5) * 2
    window = 4 * HEAD_DIM * float_bytes * 2
    assert cache.stored_bytes() == LAYERS * batch * KV_HEADS * (quantized + window)
    float_cache = transformers.DynamicCache(config=model.config)
    chunked_logits(model, tokens[:, :36], float_cache)
    float_total = sum(layer.keys.nbytes + layer.values.nbytes for layer in float_cache.layers)
    assert cache.stored_bytes() / float_total == pytest.approx((32 * 36 + 4 * 128) / (36 * 128))


def test_beam_search_reorders_codes_without_requantizing(model, tokens):
    cache = QuantizedKVCache(model.config, qtype="int4", group_size=8, residual_length=0)
    chunked_logits(model, tokens[:, :24], cache)
    layer = cache.layers[0]
    before = layer.quantized_keys.dequantize(layer.keys)
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(layer.quantized_keys.dequantize(layer.keys), before.flip(0))
    settings = dict(max_new_tokens=6, num_beams=2, do_sample=False, pad_token_id=0)
    beam_cache = QuantizedKVCache(model.config, group_size=8, residual_length=2)
    beams = model.generate(tokens[:1, :PROMPT], cache=beam_cache, **settings)
    assert beams.shape == (1, PROMPT + 6)


def test_nan_in_a_quantized_group_comes_back_as_nan(model):
    layer = QuantizedKVCache(model.config, qtype="int4", group_size=8, residual_length=0).layers[0]
    keys = torch.randn(1, KV_HEADS, 8, HEAD_DIM)
    keys[0, 0, 3, 5] = math.nan
    layer.update(keys, keys)
    past_keys, past_values = layer.update(keys[..., :1, :], keys[..., :1, :])
    assert past_keys[0, 0, :8, 5].isnan().all()  # the key group: 8 tokens of channel 5
    assert past_values[0, 0, 3, :8].isnan().all()  # the value group: channels 0-7 of token 3
    assert not past_keys[0, 1].isnan().any()


def test_crop_is_refused(model, tokens):
    cache = QuantizedKVCache(model.config, group_size=8)
    chunked_logits(model, tokens[:, :8], cache)
    cache.crop(0)
    with pytest.raises(ValueError, match="cannot crop -2 tokens"):
        cache.crop(-2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(qtype="int3"), ValueError, "qtype='int3'"),
        (dict(qtype=4), TypeError, "qtype must be"),
        (dict(group_size=0), ValueError, "group_size must be >= 1"),
        (dict(group_size=True), TypeError, "group_size must be an int"),
        (dict(group_size=5), ValueError, r"group_size=5 must divide the model's head_dim \(16\)"),
        (dict(residual_length=-1), ValueError, "residual_length must be >= 0"),
        (dict(key_axis="head"), ValueError, "key_axis must be one of"),
        (dict(value_axis=None), ValueError, "value_axis must be one of"),
    ],
)
def test_bad_arguments_are_refused_by_name(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        QuantizedKVCache(model.config, **kwargs)


def test_bad_configs_are_refused(model):
    with pytest.raises(TypeError, match="config must be a transformers PreTrainedConfig"):
        QuantizedKVCache(model)
    sliding = transformers.Qwen2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
        intermediate_size=128, vocab_size=256, use_sliding_window=True, sliding_window=8,
        max_window_layers=1,
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"all full attention; Qwen2Config also has \['sliding_attention'\]"
    ):
        QuantizedKVCache(sliding)
