"""Quantized modules under autocast return what the float module returns: its dtype, and values
within that dtype's rounding of the quantized model's own float32 output."""

import pytest
import torch
from torch import nn

from quanta.qmodules import freeze, quantize

CASES = [
    ("int4", None, "static"),
    ("int8", None, "static"),
    ("fp8", None, "static"),
    ("int8", "int8", "dynamic"),
    ("int4", "int8", "dynamic"),
    ("int8", "int8", "static"),
]


@pytest.mark.filterwarnings("ignore:.*never calibrated:UserWarning")  # 1.0 scales serve here
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize(("weights", "activations", "mode"), CASES)
def test_cpu_bfloat16_autocast_is_honoured(weights, activations, mode, frozen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_dtype = model(x).dtype
    quantize(model, weights=weights, activations=activations, activations_mode=mode)
    if frozen:
        freeze(model)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(x)
    assert expected_dtype == output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), reference, rtol=0.05, atol=0.05)


def test_qat_under_autocast_reaches_the_float_weight():
    torch.manual_seed(0)
    model = quantize(nn.Linear(64, 32), weights="int4")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(4, 64))
    assert output.dtype == torch.bfloat16
    output.float().sum().backward()
    assert model.float_weight.grad is not None and model.float_weight.grad.abs().sum() > 0
