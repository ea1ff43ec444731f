"""freeze() and what a frozen model saves, loads, copies and pickles."""

import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn

from quanta.qmodules import QTensor, WeightMemory, freeze, quantize, weight_memory


class PaddedConvNet(nn.Module):
    """A conv subclass and Linear layers: the shapes a state dict must carry."""

    def __init__(self):
        super().__init__()
        self.conv = ReflectConv2d(3, 8, 3)
        self.fc1 = nn.Linear(8 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.conv(x).flatten(1))))


class ReflectConv2d(nn.Conv2d):
    def forward(self, x):
        x = nn.functional.pad(x, (1, 0, 1, 0), mode="reflect")
        return self._conv_forward(x, self.weight, self.bias)


def net() -> PaddedConvNet:
    torch.manual_seed(0)
    return PaddedConvNet()


WEIGHTS = ["int2", "int4", "int8", "fp8"]


def test_freeze_stores_the_quantized_weight_and_frees_the_float_one():
    model = quantize(net(), weights="int4")
    float_weight = model.fc1._parameters["weight"]
    freeze(model)
    stored = model.fc1._parameters["weight"]
    assert isinstance(stored, QTensor) and isinstance(stored, nn.Parameter)
    assert stored is not float_weight and model.fc1.weight is stored
    assert all(not p.requires_grad for p in [model.fc1.weight, model.conv.weight])


def test_freeze_accepts_a_single_module_and_any_module():
    module = quantize(nn.Linear(32, 8), weights="int8")
    assert freeze(module) is module and module.is_frozen
    plain = nn.Linear(4, 4)
    assert freeze(plain) is plain and type(plain.weight) is nn.Parameter


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_freeze_refuses_non_finite_weights_naming_the_module(bad):
    model = quantize(net(), weights="int8")
    with torch.no_grad():
        model.fc2.float_weight[1, 2] = bad
    with pytest.raises(ValueError, match="'fc2'"):
        freeze(model)
    assert not model.fc1.is_frozen  # nothing was frozen


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("buffer", ["input_scale", "output_scale"])
def test_freeze_refuses_non_finite_activation_scales_naming_the_module(buffer, bad):
    """A NaN/Inf static scale makes every later output NaN: refused before any change."""
    model = quantize(net(), weights="int8", activations="int8")
    getattr(model.fc2, buffer).fill_(bad)
    with pytest.raises(ValueError, match=f"{buffer} of module 'fc2'"):
        freeze(model)
    assert not model.fc1.is_frozen  # nothing was frozen


def test_freeze_refuses_a_non_finite_scale_of_a_module_without_quantized_weight():
    model = quantize(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), activations="int8")
    model[1].output_scale.fill_(float("nan"))
    with pytest.raises(ValueError, match="output_scale of module '1'"):
        freeze(model)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_state_dict_holds_only_plain_canonical_tensors(weights):
    model = freeze(quantize(net(), weights=weights))
    state = model.state_dict()
    assert all(type(tensor) is torch.Tensor for tensor in state.values())
    assert "fc1.weight" not in state and "fc1.bias" in state
    assert state["fc1.weight.codes"].shape[0] == 64
    assert state["conv.weight.codes"].dim() == 2
    if weights in ("int2", "int4"):
        bits = int(weights[-1])
        assert state["fc1.weight.codes"].shape == (64, 288 * bits // 8)
        assert state["fc1.weight.scale"].shape == (64, 288 // 32)
        assert state["fc1.weight.zero_point"].dtype == torch.uint8
    else:
        assert state["fc1.weight.scale"].shape == (64, 1)
        assert "fc1.weight.zero_point" not in state


@pytest.mark.parametrize("weights", WEIGHTS)
def test_state_dict_round_trip_is_bit_identical(weights, uniform_inputs):
    frozen = freeze(quantize(net(), weights=weights))
    buffer = io.BytesIO()
    torch.save(frozen.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    torch.manual_seed(1)  # different float weights: everything must come from the state dict
    fresh = quantize(PaddedConvNet(), weights=weights)
    fresh.load_state_dict(state, strict=True)
    assert fresh.fc1.is_frozen and fresh.conv.is_frozen
    inputs = uniform_inputs(2, 3, 7, 7)
    assert torch.equal(fresh(inputs), frozen(inputs))


def test_loading_into_other_settings_is_refused():
    state = freeze(quantize(net(), weights="int4")).state_dict()
    with pytest.raises(RuntimeError, match=r"zero_point|codes"):
        quantize(net(), weights="int8").load_state_dict(state)
    with pytest.raises(RuntimeError, match="scale"):
        quantize(net(), weights="int4", overrides={"fc1": {"group_size": 96}}).load_state_dict(
            state
        )


def test_float_state_dict_still_loads_into_a_dynamic_model(uniform_inputs):
    source = net()
    model = quantize(net(), weights="int8")
    model.load_state_dict(source.state_dict())
    inputs = uniform_inputs(2, 3, 7, 7)
    expected = freeze(quantize(copy.deepcopy(source), weights="int8"))(inputs)
    assert torch.equal(model(inputs), expected)


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_deepcopy_and_pickle_of_a_frozen_model(weights, uniform_inputs):
    model = freeze(quantize(net(), weights=weights))
    inputs = uniform_inputs(2, 3, 7, 7)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(other.conv) is type(model.conv) and other.conv.is_frozen
        assert torch.equal(other(inputs), model(inputs))


def test_pickle_of_a_dynamic_model(uniform_inputs):
    model = quantize(net(), weights="int4")
    other = pickle.loads(pickle.dumps(model))
    inputs = uniform_inputs(2, 3, 7, 7)
    assert not other.fc1.is_frozen and torch.equal(other(inputs), model(inputs))


def linear_memory(weights: str) -> WeightMemory:
    return weight_memory(freeze(quantize(nn.Linear(512, 256), weights=weights)))


# acceptance: quantized weight bytes against float32 (codes + scales + zero points)
MEMORY_RATIO = {"int8": 0.26, "int4": 0.145, "int2": 0.08}


@pytest.mark.parametrize("weights", sorted(MEMORY_RATIO))
def test_weight_memory_ratio(weights):
    memory = linear_memory(weights)
    assert memory.float_bytes == 512 * 256 * 4
    assert memory.quantized_bytes / memory.float_bytes <= MEMORY_RATIO[weights]


def test_weight_memory_counts_every_stored_byte_and_matches_before_freeze():
    model = quantize(nn.Linear(512, 256), weights="int4")
    planned = weight_memory(model)
    freeze(model)
    assert weight_memory(model) == planned
    codes, scales, zero_points = 256 * 256, 256 * 4 * 4, 256 * 4
    assert planned.quantized_bytes == codes + scales + zero_points
    assert weight_memory(nn.Linear(4, 4)) == WeightMemory(0, 0)
    assert math.isclose(weight_memory(net()).float_bytes, 0)


@pytest.fixture
def bars_at_once(monkeypatch):
    """Bars shown from the first step: stands for a phase that runs over a second."""
    monkeypatch.setattr("quanta.qmodules.progress.DELAY_S", 0.0)


def test_a_long_freeze_shows_a_bar_over_the_modules(bars_at_once, capsys):
    freeze(quantize(net(), weights="int4"))
    shown = capsys.readouterr().err
    assert "freeze:" in shown and "0/3 " in shown and "module" in shown  # 3 modules


def test_no_bar_with_progress_false(bars_at_once, capsys):
    model = freeze(quantize(net(), weights="int4"), progress=False)
    assert model.fc1.is_frozen and capsys.readouterr().err == ""


def test_no_bar_for_a_freeze_under_a_second(capsys):
    freeze(quantize(net(), weights="int4"), progress=False)  # torch's one-time imports
    capsys.readouterr()
    model = freeze(quantize(net(), weights="int4"))
    assert model.fc2.is_frozen and capsys.readouterr().err == ""
