"""Issue #4 acceptance across layers: an MLP quantized and calibrated with quanta.qcalib, saved,
then loaded onto a meta-built model, gives identical outputs (fp32/fp16/bf16 x int2/int4/int8/
float8 weights x no / int8 calibrated activations)."""

import pytest
import torch
from torch import nn

from quanta.qcalib import Calibration, rotate, smooth
from quanta.qio import load, save
from quanta.qmodules import QTensor, freeze, quantize


def mlp(dtype: torch.dtype) -> nn.Module:
    return nn.Sequential(
        nn.Linear(256, 128, dtype=dtype),
        nn.GELU(),
        nn.LayerNorm(128, dtype=dtype),
        nn.Linear(128, 16, dtype=dtype),
    )


def plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.dequantize() if isinstance(tensor, QTensor) else tensor


@pytest.mark.parametrize("activations", [None, "int8"])
@pytest.mark.parametrize("weights", ["int2", "int4", "int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_calibrated_mlp_round_trips_exactly(tmp_path, dtype, weights, activations):
    torch.manual_seed(0)
    samples = torch.randn(64, 256, dtype=dtype)
    model = quantize(mlp(dtype), weights=weights, activations=activations)
    if activations is not None:
        with Calibration(momentum=0.9):
            model(samples)
    freeze(model)
    save(model, tmp_path)
    with torch.device("meta"):
        skeleton = mlp(dtype)
    loaded = load(tmp_path, skeleton, progress=False)
    x = torch.randn(8, 256, dtype=dtype)
    with torch.inference_mode():
        assert torch.equal(plain(loaded(x)), plain(model(x)))


def test_smoothed_and_rotated_w8a8_mlp_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    samples = torch.randn(64, 256)
    model = quantize(mlp(torch.float32), weights="int8", activations="int8")
    with torch.inference_mode():
        smooth(model, [samples], alpha=0.7)
    rotate(model, "0")
    with torch.inference_mode(), Calibration(momentum=0.9):
        model(samples)
    freeze(model)
    save(model, tmp_path)
    with torch.device("meta"):
        skeleton = mlp(torch.float32)
    loaded = load(tmp_path, skeleton, progress=False)
    assert loaded[0].input_rotation.shape == (1, 256)  # the default block: 256 features
    x = torch.randn(8, 256)
    with torch.inference_mode():
        assert torch.equal(plain(loaded(x)), plain(model(x)))
