"""QConv2d: quantized weights in the canonical 2D layout, any conv configuration."""

import copy

import pytest
import torch
from torch import nn

from quanta.qmodules import QConv2d, freeze, quantize

# per output channel (int8) / per group of 32 (int4) weight error seen through a 3x3 conv
MAX_RELATIVE_ERROR = {"int8": 0.01, "int4": 0.1}

CONVS = {
    "plain": dict(in_channels=8, out_channels=16, kernel_size=3),
    "strided_padded": dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1),
    "grouped": dict(in_channels=8, out_channels=16, kernel_size=3, groups=2),
    "reflect": dict(
        in_channels=8, out_channels=16, kernel_size=3, padding=1, padding_mode="reflect"
    ),
    "no_bias": dict(in_channels=8, out_channels=4, kernel_size=1, bias=False),
}


@pytest.mark.parametrize("weights", sorted(MAX_RELATIVE_ERROR))
@pytest.mark.parametrize("config", sorted(CONVS))
def test_conv_matches_the_float_conv(config, weights, relative_error, uniform_inputs):
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONVS[config])
    inputs = uniform_inputs(2, 8, 11, 11)
    quantized = freeze(quantize(copy.deepcopy(conv), weights=weights))
    assert type(quantized) is QConv2d
    assert quantized.weight.shape == conv.weight.shape
    assert quantized.weight.codes.dim() == 2
    with torch.no_grad():
        out = quantized(inputs)
        assert relative_error(out, conv(inputs)) < MAX_RELATIVE_ERROR[weights]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv_keeps_the_float_dtype(dtype, uniform_inputs):
    conv = freeze(quantize(nn.Conv2d(4, 8, 3).to(dtype), weights="int4"))
    assert conv(uniform_inputs(1, 4, 5, 5, dtype=dtype)).dtype == dtype


def test_conv_under_inference_mode_and_empty_batch(uniform_inputs):
    conv = quantize(nn.Conv2d(4, 8, 3), weights="int2")
    with torch.inference_mode():
        assert conv(uniform_inputs(0, 4, 5, 5)).shape == (0, 8, 3, 3)
        freeze(conv)
        assert conv(uniform_inputs(1, 4, 5, 5)).shape == (1, 8, 3, 3)
