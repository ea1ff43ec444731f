"""QEmbedding, tied embeddings and quantize(filter_fn=...)."""

import copy
import warnings
from unittest import mock

import pytest
import torch
from torch import nn

from quanta.qmodules import (
    PartSpec,
    QBitsTensor,
    QBytesTensor,
    QEmbedding,
    QLinear,
    QTensor,
    QWeightTensor,
    apply_module_config,
    freeze,
    layout_for,
    quantize,
    to_module_config,
)
from quanta.qtypes import to_qtype

WEIGHTS = ["int2", "int4", "int8", "fp8"]


class TinyLM(nn.Module):
    """An embedding, a hidden Linear and an lm_head tied to the embedding (SmolLM2, GPT-2)."""

    def __init__(self, vocab: int = 64, dim: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(self.embed(ids)))


@pytest.mark.parametrize("weights", WEIGHTS)
def test_lookup_equals_the_dequantized_rows_exactly(weights):
    torch.manual_seed(0)
    embedding = freeze(quantize(nn.Embedding(50, 64), weights=weights))
    assert type(embedding) is QEmbedding and embedding.is_frozen
    ids = torch.tensor([[3, 0, 49], [3, 7, 7]])
    with torch.no_grad():
        assert torch.equal(embedding(ids), embedding.weight.dequantize()[ids])


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_lookup_dequantizes_only_the_rows_it_reads(weights):
    embedding = freeze(quantize(nn.Embedding(4096, 64), weights=weights))
    layout = type(embedding.weight)
    dequantized_rows = []
    original = layout.dequantize

    def counting(self):
        dequantized_rows.append(self.shape[0])
        return original(self)

    with mock.patch.object(layout, "dequantize", counting), torch.no_grad():
        embedding(torch.tensor([[5, 9, 4095]]))
    assert dequantized_rows == [3]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_rows_keeps_the_layout_and_its_settings(weights):
    torch.manual_seed(0)
    weight = torch.randn(10, 64)
    qtype = to_qtype(weights)
    group_size = 32 if layout_for(qtype).grouped else None
    quantized = layout_for(qtype).quantize(weight, qtype, group_size)
    rows = quantized.rows(torch.tensor([9, 2]))
    assert isinstance(rows, QWeightTensor) and type(rows) is type(quantized)
    assert rows.shape == (2, 64) and rows.attributes() == quantized.attributes()
    assert torch.equal(rows.dequantize(), quantized.dequantize()[[9, 2]])


def test_out_of_range_ids_raise_as_for_a_float_embedding():
    embedding = freeze(quantize(nn.Embedding(8, 32), weights="int8"))
    with pytest.raises(IndexError), torch.no_grad():
        embedding(torch.tensor([8]))
    with pytest.raises(IndexError), torch.no_grad():
        embedding(torch.tensor([-1]))


def test_embeddings_stay_weight_only_with_activations():
    model = TinyLM()
    model.lm_head.weight = nn.Parameter(model.embed.weight.detach().clone())  # untied
    quantize(model, weights="int8", activations="int8", activations_mode="dynamic")
    assert model.embed.qconfig.activations is None
    assert model.hidden.qconfig.activations is not None
    config = to_module_config({"weights": "int8", "activations": "int8"}, "config")
    with pytest.raises(ValueError, match=r"'embed'.*weight only"):
        apply_module_config(nn.Embedding(4, 32), config, "embed")


def test_qat_gradient_reaches_the_float_embedding():
    embedding = quantize(nn.Embedding(16, 32), weights="int8")
    embedding(torch.tensor([1, 2, 2])).sum().backward()
    grad = embedding.float_weight.grad
    assert grad is not None and grad[2].eq(2).all() and grad[0].eq(0).all()


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_tied_embedding_and_head_share_one_quantized_weight(weights):
    model = TinyLM()
    reference = copy.deepcopy(model)
    freeze(quantize(model, weights=weights))
    assert type(model.embed) is QEmbedding and type(model.lm_head) is QLinear
    assert isinstance(model.embed.weight, QTensor)
    assert model.embed.stored_weight is model.lm_head.stored_weight
    one_by_one = quantize(TinyLM(), weights=weights)
    freeze(one_by_one.embed)
    freeze(one_by_one.lm_head)  # frozen apart, still one tensor
    assert one_by_one.embed.stored_weight is one_by_one.lm_head.stored_weight
    fresh = quantize(TinyLM(), weights=weights)
    fresh.load_state_dict(model.state_dict())
    ids = torch.tensor([[1, 5, 63]])
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))
        assert not torch.equal(model(ids), reference(ids))  # the lookup reads quantized rows


@pytest.mark.parametrize(
    "arguments",
    [{"exclude": "lm_head"}, {"include": "embed"}, {"overrides": {"lm_head": {"weights": "int4"}}}],
)
def test_a_tied_group_chosen_in_part_stays_float_with_one_warning(arguments):
    model = TinyLM()
    with pytest.warns(UserWarning, match="modules 'embed', 'lm_head' share one weight") as caught:
        quantize(model, weights="int8", **arguments)
    assert len(caught) == 1
    assert type(model.embed) is nn.Embedding and type(model.lm_head) is nn.Linear
    assert model.embed.weight is model.lm_head.weight


def test_tied_group_excluded_whole_is_silent():
    model = TinyLM()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize(model, weights="int8", exclude=["embed", "lm_head"])
    assert type(model.hidden) is QLinear and type(model.embed) is nn.Embedding


def test_filter_fn_combines_with_include_and_exclude():
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Conv1d(32, 32, 1))
    seen = []

    def only_linear(module, name):
        seen.append(name)
        return isinstance(module, nn.Linear)

    quantize(model, weights="int8", exclude="1", filter_fn=only_linear)
    assert [type(m).__name__ for m in model] == ["QLinear", "Linear", "Conv1d"]
    assert seen == ["0", "2"]  # asked after include/exclude, only about modules quantize handles


def test_filter_fn_must_be_callable():
    model = nn.Sequential(nn.Linear(32, 32))
    with pytest.raises(TypeError, match="filter_fn"):
        quantize(model, weights="int8", filter_fn="Linear")
    assert type(model[0]) is nn.Linear


class _WithTensorScale(QBytesTensor):
    """A layout with a per-tensor part (as NVFP4's fp32 scale): rows are still read apart."""

    @classmethod
    def part_specs(cls, qtype, rows, in_size, group_size):
        return {**super().part_specs(qtype, rows, in_size, group_size), "t": PartSpec((1,), None)}


class _WithBlockScales(QBytesTensor):
    """A layout with a part over blocks of 256 rows' scales (double quantization): rows cannot
    be read apart, so a lookup dequantizes the whole weight."""

    @classmethod
    def part_specs(cls, qtype, rows, in_size, group_size):
        blocks = PartSpec(((rows + 255) // 256,), None)
        return {**super().part_specs(qtype, rows, in_size, group_size), "s": blocks}


def test_row_parts_are_told_from_their_specs():
    qtype = to_qtype("int8")
    assert QBytesTensor.row_part_names(qtype, 64, None) == ("codes", "scale")
    assert QBitsTensor.row_part_names(to_qtype("int4"), 64, 32) == ("codes", "scale", "zero_point")
    assert _WithTensorScale.row_part_names(qtype, 64, None) == ("codes", "scale")
    assert _WithBlockScales.row_part_names(qtype, 64, None) is None
