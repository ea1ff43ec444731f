"""QConv1d: a speech front end (Whisper's two Conv1d) quantized, frozen and reloaded."""

import copy

import pytest
import torch
from torch import nn

from quanta.qmodules import QConv1d, freeze, quantize

# per output channel (8-bit) / per group of 32 columns (int4) weight error through two convs
MAX_RELATIVE_ERROR = {"int8": 0.01, "fp8": 0.04, "int4": 0.1}
DYNAMIC_INT8_TOLERANCE = 0.02  # as test_activations_modules.py: int8 weights and activations


def whisper_front_end() -> nn.Sequential:
    """Whisper's encoder stem at a small size: 16 mel bins, two 3-wide Conv1d, GELU."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(16, 32, kernel_size=3, padding=1),
        nn.GELU(),
        nn.Conv1d(32, 32, kernel_size=3, stride=2, padding=1),
        nn.GELU(),
    )


@pytest.mark.parametrize("weights", sorted(MAX_RELATIVE_ERROR))
def test_front_end_matches_the_float_one(weights, relative_error, uniform_inputs):
    model = whisper_front_end()
    mels = uniform_inputs(2, 16, 40)
    quantized = freeze(quantize(copy.deepcopy(model), weights=weights))
    assert [type(module) for module in quantized[::2]] == [QConv1d, QConv1d]
    assert quantized[0].weight.shape == model[0].weight.shape
    with torch.no_grad():
        assert relative_error(quantized(mels), model(mels)) < MAX_RELATIVE_ERROR[weights]


def test_dynamic_activations_per_time_step(relative_error, uniform_inputs):
    model = whisper_front_end()
    mels = uniform_inputs(2, 16, 40)
    quantized = quantize(copy.deepcopy(model), activations="int8", activations_mode="dynamic")
    with torch.no_grad():
        assert relative_error(quantized(mels), model(mels)) < DYNAMIC_INT8_TOLERANCE


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_state_dict_round_trip_is_bit_identical(weights, uniform_inputs):
    model = freeze(quantize(whisper_front_end(), weights=weights))
    fresh = quantize(whisper_front_end(), weights=weights)
    fresh.load_state_dict(model.state_dict())
    mels = uniform_inputs(1, 16, 20)
    with torch.no_grad():
        assert torch.equal(fresh(mels), model(mels))
    assert all(fresh[i].is_frozen for i in (0, 2))
