"""QConv2d: quantized weights in the canonical 2D layout, any conv configuration."""

import copy

import pytest
import torch
from torch import nn

from quanta.qmodules import QActivationTensor, QConv2d, freeze, quantize

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


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("activations", ["int8", "float8_e4m3fn"])
def test_a_nan_pixel_gives_nan_where_the_float_conv_has_it(activations, mode, uniform_inputs):
    """Dynamic (a scale per pixel) and float8 keep the NaN to its pixel, so the output is NaN
    exactly where the float conv's is; static int8 (one scale, no NaN code) is NaN as a whole."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    config = dict(weights="int8", activations=activations, activations_mode=mode)
    quantized = freeze(quantize(copy.deepcopy(conv), **config))
    x = uniform_inputs(2, 4, 6, 6)
    x[1, 2, 3, 4] = float("nan")
    with torch.no_grad():
        out, expected = quantized(x), conv(x)
    out = out.dequantize() if isinstance(out, QActivationTensor) else out
    if mode == "static" and activations == "int8":
        assert out.isnan().all()
    else:
        assert expected.isnan().any() and torch.equal(out.isnan(), expected.isnan())


@pytest.mark.parametrize("weights", ["int2", "int4", "int8", "float8_e4m3fn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_weights_near_the_dtype_limit_give_finite_outputs(dtype, weights, uniform_inputs):
    """A Conv2d whose weights reach ±finfo.max(dtype) (fp16: ±65504) on inputs that keep the
    float output finite: the quantized output is finite too (it used to dequantize to ±Inf)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, bias=False).to(dtype)
    limit = torch.finfo(dtype).max
    with torch.no_grad():
        conv.weight.copy_((uniform_inputs(8, 4, 3, 3, seed=3).double() * limit).to(dtype))
        conv.weight[:, 0, 0, :2] = torch.tensor([limit, -limit], dtype=dtype)
        inputs = uniform_inputs(1, 4, 5, 5, dtype=dtype) / (36 * 16)
        group_size = 36 if weights in ("int2", "int4") else None
        out = freeze(quantize(copy.deepcopy(conv), weights=weights, group_size=group_size))(inputs)
        assert conv(inputs).isfinite().all() and out.isfinite().all()
