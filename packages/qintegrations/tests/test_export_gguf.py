"""GGUF export: the file gguf's own reader reads back holds quanta's weights bit for bit."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from quanta.qintegrations.export.gguf import save_gguf  # noqa: E402
from quanta.qmodules import (  # noqa: E402
    MinmaxOptimizer,
    QWeightTensor,
    WeightOptimizer,
    WeightParts,
    freeze,
    quantize,
)
from quanta.qtypes import PACKED_AFFINE  # noqa: E402

Q = gguf.GGMLQuantizationType
BYTE_TOKENS = 256
SPECIAL_TOKENS = ("<s>", "</s>")
VOCAB_SIZE = 272  # 256 bytes, 2 specials, 1 merge, then embedding rows without a token
TINY = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=BYTE_TOKENS,
    eos_token_id=BYTE_TOKENS + 1,
)
# Transformers parameter name suffix -> GGUF tensor name (llama.cpp's llama and qwen2 names)
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def byte_level_tokenizer(qwen2: bool = False):
    """A byte-level BPE tokenizer over the 256 byte symbols, two specials and one merge."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({token: BYTE_TOKENS + i for i, token in enumerate(SPECIAL_TOKENS)})
    vocab["Ġt"] = len(vocab)  # llama.cpp needs at least one merge
    merges = [("Ġ", "t")]
    if qwen2:
        return transformers.Qwen2Tokenizer(
            vocab=vocab, merges=merges, bos_token=None, eos_token="</s>", pad_token="</s>"
        )
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>"
    )


def tiny_model(kind: str, dtype: torch.dtype = torch.float16, initializer_range: float = 0.02):
    """A tiny Llama (untied lm_head) or Qwen2 (tied, q/k/v biases) with random weights."""
    torch.manual_seed(0)
    settings = dict(TINY, initializer_range=initializer_range)
    if kind == "llama":
        config = transformers.LlamaConfig(**settings, tie_word_embeddings=False)
        return transformers.LlamaForCausalLM(config).to(dtype).eval()
    config = transformers.Qwen2Config(**settings, tie_word_embeddings=True)
    return transformers.Qwen2ForCausalLM(config).to(dtype).eval()


class SymmetricInt4(WeightOptimizer):
    """Zero point 8 everywhere (the Q4_0 case): absmax / 7 scales per group."""

    name = "test-symmetric"
    layouts = (PACKED_AFFINE,)

    def optimize(self, weight, qtype, group_size, module=None):
        groups = weight.float().reshape(weight.shape[0], -1, group_size)
        scale = (groups.abs().amax(-1) / 7).clamp(min=2**-10).to(weight.dtype)
        codes = (groups / scale.float()[..., None]).round().clamp(-8, 7) + 8
        zero_point = torch.full(scale.shape, 8, dtype=torch.uint8)
        return WeightParts(codes.to(torch.uint8).reshape(weight.shape), scale, zero_point)


class PowerOfTwoInt4(WeightOptimizer):
    """Min-max with scales rounded up to a power of two: -zero_point * scale is exact in fp16
    (the Q4_1 case)."""

    name = "test-power-of-two"
    layouts = (PACKED_AFFINE,)

    def optimize(self, weight, qtype, group_size, module=None):
        groups = weight.float().reshape(weight.shape[0], -1, group_size)
        low, high = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
        scale = torch.exp2(torch.log2((high - low) / 15).ceil())
        zero_point = (-low / scale).round().clamp(0, 15)
        codes = (groups / scale[..., None] + zero_point[..., None]).round().clamp(0, 15)
        codes = codes.to(torch.uint8).reshape(weight.shape)
        return WeightParts(codes, scale.to(weight.dtype), zero_point.to(torch.uint8))


class FloatZeroPoint(MinmaxOptimizer):
    """Min-max with float zero points (as HQQ stores them) a third of a step off the integers:
    their products with the scales need more bits than float16 has."""

    name = "test-float-zero-point"
    float_zero_point = True

    def optimize(self, weight, qtype, group_size, module=None):
        parts = super().optimize(weight, qtype, group_size, module)
        zero_point = (parts.zero_point.float() + 1 / 3).to(weight.dtype)
        return WeightParts(parts.codes, parts.scale, zero_point)


REFUSED_MODULE = "model.layers.0.mlp.up_proj"


def quantized(kind: str, dtype: torch.dtype = torch.float16, initializer_range=0.02, **settings):
    model = tiny_model(kind, dtype, initializer_range)
    quantize(model, **settings)
    return freeze(model, progress=False)


def gguf_name(name: str) -> str:
    """The GGUF name of a Transformers parameter of the tiny models."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    block, module, suffix = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(\w+)", name).groups()
    return f"blk.{block}.{GGUF_NAMES[module]}.{suffix}"


def unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order (interleaved pairs) back to Transformers' (halves)."""
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def exact_values(parameter: torch.Tensor) -> torch.Tensor:
    """quanta's dequantized weight, computed in float32 (as gguf's reader computes)."""
    if isinstance(parameter, QWeightTensor):
        return parameter.to(torch.float32).dequantize()
    return parameter.float()


def read_back(path, model, kind: str) -> dict[str, tuple[object, torch.Tensor]]:
    """GGUF name -> (tensor type, values as gguf dequantizes them, q/k rows back in order)."""
    config = model.config
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    result = {}
    for tensor in gguf.GGUFReader(path).tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        kind_name = tensor.name.split(".")[-2]
        if kind == "llama" and kind_name in heads:
            values = unpermute(values, heads[kind_name])
        result[tensor.name] = (tensor.tensor_type, torch.from_numpy(values.copy()))
    return result


def assert_bit_for_bit(path, model, kind: str) -> dict[str, object]:
    """Every parameter reads back as quanta's values; returns the GGUF type of each tensor."""
    stored = read_back(path, model, kind)
    names = {gguf_name(name): parameter for name, parameter in model.named_parameters()}
    assert sorted(stored) == sorted(names)
    for name, parameter in names.items():
        ggml_type, values = stored[name]
        expected = exact_values(parameter.detach())
        if ggml_type == Q.F16:
            expected = expected.half().float()
        assert torch.equal(values.reshape(expected.shape), expected), name
    return {name: ggml_type for name, (ggml_type, _) in stored.items()}


def quantized_types(types: dict[str, object]) -> set:
    """The types of the matrices (norms and biases are F32)."""
    vectors = ("norm.weight", ".bias")
    return {ggml_type for name, ggml_type in types.items() if not name.endswith(vectors)}


LLAMA, QWEN2 = ["llama"], ["llama", "qwen2"]  # Qwen2 (biases, tied, no q/k permutation) twice


@pytest.mark.parametrize(
    ("kinds", "settings", "expected"),
    [
        (LLAMA, dict(weights="qint4", group_size=32, optimizer=SymmetricInt4()), Q.Q4_0),
        (LLAMA, dict(weights="qint4", group_size=32, optimizer=PowerOfTwoInt4()), Q.Q4_1),
        (QWEN2, dict(weights="qint4", group_size=32), Q.Q5_0),  # min-max: minima not fp16
        (LLAMA, dict(weights="qint4", group_size=64), Q.Q5_0),  # a group is two blocks
        (LLAMA, dict(weights="qint2", group_size=32), Q.Q4_0),
        (QWEN2, dict(weights="qint8"), Q.Q8_0),
        (LLAMA, dict(weights="qmxfp4"), Q.MXFP4),
    ],
    ids=["int4-sym-Q4_0", "int4-Q4_1", "int4-Q5_0", "int4-g64", "int2-Q4_0", "int8", "mxfp4"],
)
def test_weights_read_back_bit_for_bit(tmp_path, kinds, settings, expected):
    for kind in kinds:
        model = quantized(kind, **settings)
        tokenizer = byte_level_tokenizer(kind == "qwen2")
        path = save_gguf(model, tmp_path / f"{kind}.gguf", tokenizer=tokenizer)
        assert path == tmp_path / f"{kind}.gguf"
        types = assert_bit_for_bit(path, model, kind)
        assert quantized_types(types) == {expected}
        assert {types[name] for name in types if name.endswith("norm.weight")} == {Q.F32}


def test_float_modules_are_f16_and_bf16_models_exact(tmp_path):
    model = quantized("llama", torch.bfloat16, weights="qint4", group_size=32, exclude="lm_head")
    path = save_gguf(model, tmp_path / "model.gguf", tokenizer=byte_level_tokenizer())
    types = assert_bit_for_bit(path, model, "llama")
    assert types["output.weight"] == Q.BF16  # float, kept in its own dtype
    assert types["blk.0.attn_q.weight"] == Q.Q5_0  # bf16 scales are exact in fp16

    model = quantized("qwen2", weights="qint8", exclude=["lm_head", "model.embed_tokens"])
    path = save_gguf(model, tmp_path / "qwen2.gguf", tokenizer=byte_level_tokenizer(True))
    types = assert_bit_for_bit(path, model, "qwen2")
    assert types["token_embd.weight"] == Q.F16 and "output.weight" not in types  # tied
    assert types["blk.0.attn_q.bias"] == Q.F32


def field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_metadata_and_tokenizer_keys(tmp_path, kind):
    model = quantized(kind, weights="qint8")
    tokenizer = byte_level_tokenizer(kind == "qwen2")
    reader = gguf.GGUFReader(save_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer))
    assert field(reader, "general.architecture") == kind
    expected = {
        "block_count": 2,
        "context_length": 128,
        "embedding_length": 64,
        "feed_forward_length": 128,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "rope.dimension_count": 16,
        "vocab_size": VOCAB_SIZE,
    }
    for key, value in expected.items():
        assert field(reader, f"{kind}.{key}") == value, key
    assert field(reader, f"{kind}.rope.freq_base") == model.config.rope_parameters["rope_theta"]
    eps = field(reader, f"{kind}.attention.layer_norm_rms_epsilon")
    assert eps == pytest.approx(model.config.rms_norm_eps)
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == ("qwen2" if kind == "qwen2" else "gpt-2")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == VOCAB_SIZE
    assert tokens[BYTE_TOKENS : BYTE_TOKENS + 3] == ["<s>", "</s>", "Ġt"]
    assert types[BYTE_TOKENS + 1] == gguf.TokenType.CONTROL  # </s>, special in both
    assert types[0] == types[BYTE_TOKENS + 2] == gguf.TokenType.NORMAL
    assert tokens[-1] == f"[PAD{VOCAB_SIZE - 1}]" and types[-1] == gguf.TokenType.UNUSED
    assert field(reader, "tokenizer.ggml.merges") == ["Ġ t"]
    assert field(reader, "tokenizer.ggml.eos_token_id") == BYTE_TOKENS + 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(weights="qint4", group_size=16), "group_size=32"),
        (dict(weights="qnf4", group_size=32), "no block type for qnf4"),
        (dict(weights="qint8", activations="qint8"), "activations=None"),
        (dict(weights="qint4", group_size=32, optimizer=FloatZeroPoint()), "integer zero points"),
    ],
    ids=["group16", "nf4", "w8a8", "float-zero-points"],
)
def test_refusals_name_the_module_and_the_exact_option(tmp_path, settings, message):
    model = quantized("llama", include=REFUSED_MODULE, **settings)
    with pytest.raises(ValueError, match=message) as error:
        save_gguf(model, tmp_path / "m.gguf", tokenizer=byte_level_tokenizer())
    assert f"module {REFUSED_MODULE!r}" in str(error.value)
    assert "requantize=True" in str(error.value)
    assert not (tmp_path / "m.gguf").exists()


def test_fp32_scales_refused_with_the_fp16_option(tmp_path):
    model = quantized("llama", torch.float32, weights="qint4", group_size=32)
    with pytest.raises(ValueError, match=r"not exact in float16.*dtype=torch\.float16"):
        save_gguf(model, tmp_path / "m.gguf", tokenizer=byte_level_tokenizer())


def test_other_refusals(tmp_path):
    tokenizer = byte_level_tokenizer()
    model = tiny_model("llama")
    quantize(model, weights="qint8")
    with pytest.raises(ValueError, match="not frozen"):
        save_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer)
    freeze(model, progress=False)
    other = tmp_path / "notes.txt"
    other.write_text("not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        save_gguf(model, other, tokenizer=tokenizer)
    assert other.read_text() == "not a model"
    with pytest.raises(ValueError, match="pass tokenizer="):
        save_gguf(model, tmp_path / "m.gguf")
    model.config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ValueError, match="rope_type 'dynamic'"):
        save_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match="model types"):
        save_gguf(gpt2, tmp_path / "m.gguf", tokenizer=tokenizer)


def test_cli_quantize_then_export_gguf(tmp_path, capsys):
    from quanta.qintegrations import cli

    folder = tmp_path / "float"
    tiny_model("llama").save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    quantized, output = tmp_path / "int8", tmp_path / "model.gguf"
    assert cli.main(["quantize", str(folder), "-o", str(quantized), "--weights", "int8"]) == 0
    assert cli.main(["export", str(quantized), "--format", "gguf", "-o", str(output)]) == 0
    assert f"exported to {output} (gguf)" in capsys.readouterr().out
    model = transformers.AutoModelForCausalLM.from_pretrained(quantized).eval()
    types = assert_bit_for_bit(output, model, "llama")
    # quanta quantize keeps the output embeddings float (Transformers' choice), the rest int8
    assert types.pop("output.weight") == Q.F16 and quantized_types(types) == {Q.Q8_0}
    tokens = field(gguf.GGUFReader(output), "tokenizer.ggml.tokens")
    assert len(tokens) == model.config.vocab_size  # padded to the embedding rows


def test_requantize_warns_with_the_error_it_adds(tmp_path):
    model = quantized("llama", torch.float32, weights="qint4", group_size=32)
    with pytest.warns(UserWarning, match=r"requantized by gguf.quants: relative error") as caught:
        path = save_gguf(
            model, tmp_path / "m.gguf", tokenizer=byte_level_tokenizer(), requantize=True
        )
    assert len(caught) == 1
    stored = read_back(path, model, "llama")
    ggml_type, values = stored["blk.0.ffn_up.weight"]
    expected = model.model.layers[0].mlp.up_proj.weight.dequantize()
    assert ggml_type == Q.Q4_1
    error = ((values - expected).norm() / expected.norm()).item()
    assert 0 < error < 0.01  # the same grid, its scale and minimum rounded to fp16


def test_requantize_of_exact_weights_changes_nothing(tmp_path):
    model = quantized("llama", weights="qint8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = save_gguf(
            model, tmp_path / "m.gguf", tokenizer=byte_level_tokenizer(), requantize=True
        )
    assert_bit_for_bit(path, model, "llama")


# Weights 5x the default init, so that attention depends on positions: a q/k row order that is
# not llama.cpp's then moves the tiny Llama's logits by 80% of their largest value (measured).
LLAMA_CPP_INIT = 0.1
# llama.cpp multiplies quantized weights by activations it quantizes itself (8 bits per block of
# 32, Q8_0/Q8_1): its logits differ from quanta's by 2.2% of their largest value (measured).
LLAMA_CPP_LOGITS_TOLERANCE = 0.05


@pytest.mark.parametrize(
    ("kind", "weights"),
    [("llama", "qint4"), ("llama", "qint8"), ("llama", "qmxfp4"), ("qwen2", "qint4")],
)
def test_llama_cpp_runs_the_tiny_models(tmp_path, kind, weights):
    """Runs wherever llama-cpp-python is installed (the interop session)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    settings = dict(weights=weights, group_size=32 if weights == "qint4" else None)
    model = quantized(kind, initializer_range=LLAMA_CPP_INIT, **settings)
    tokenizer = byte_level_tokenizer(kind == "qwen2")
    path = save_gguf(model, tmp_path / "model.gguf", tokenizer=tokenizer)
    token_ids = torch.randint(0, BYTE_TOKENS, (24,), generator=torch.Generator().manual_seed(1))
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(token_ids.tolist())
    logits = torch.from_numpy(np.array(llm.scores[: token_ids.numel()]))
    with torch.inference_mode():
        expected = model.float()(token_ids[None]).logits[0]  # the same weights, in fp32
    tolerance = LLAMA_CPP_LOGITS_TOLERANCE * expected.abs().max().item()
    torch.testing.assert_close(logits, expected, atol=tolerance, rtol=0)
