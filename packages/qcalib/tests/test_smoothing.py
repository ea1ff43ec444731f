"""smooth(): SmoothQuant-style migration of activation outliers into the weights."""

import io

import pytest
import torch
from torch import nn

from quanta.qcalib import Calibration, smooth
from quanta.qmodules import QActivationTensor, freeze, quantize


def outlier_batches(count: int = 3) -> list[torch.Tensor]:
    """Inputs whose channel 0 is 100x the others, the outlier pattern SmoothQuant targets."""
    gain = torch.ones(32)
    gain[0] = 100.0
    return [
        torch.randn(16, 32, generator=torch.Generator().manual_seed(s)) * gain for s in range(count)
    ]


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 16))


def plain(t):
    return t.dequantize() if isinstance(t, QActivationTensor) else t


def test_smoothing_leaves_the_float_product_unchanged():
    reference = model()
    qmodel = quantize(model(), weights="int8", activations="int8", activations_mode="dynamic")
    smooth(qmodel, outlier_batches(), alpha=0.5)
    smoothing = qmodel[0].input_smoothing
    assert smoothing.shape == (32,) and float(smoothing[0]) > float(smoothing[1:].max())
    x = outlier_batches(1)[0]
    float_output = nn.functional.linear(x / smoothing, qmodel[0].float_weight, qmodel[0].bias)
    torch.testing.assert_close(float_output, reference(x), rtol=1e-4, atol=1e-4)


def test_smoothing_reduces_the_static_w8a8_error():
    reference = model()
    x = outlier_batches(1)[0]  # calibrated on itself: no clipping, only rounding differs
    errors = []
    for alpha in (None, 0.5):
        qmodel = quantize(model(), weights="int8", activations="int8")
        with torch.no_grad():
            if alpha is not None:
                smooth(qmodel, outlier_batches(), alpha=alpha)
            with Calibration():  # the output goes to the caller: streamlined to float
                qmodel(x)
            freeze(qmodel)
            output = plain(qmodel(x))
            expected = reference(x)
        errors.append(float((output - expected).norm() / expected.norm()))
    assert errors[1] < errors[0] / 2, errors


def test_smoothing_is_saved_and_loaded_with_the_state_dict():
    qmodel = quantize(model(), weights="int8", activations="int8", activations_mode="dynamic")
    smooth(qmodel, outlier_batches())
    freeze(qmodel)
    buffer = io.BytesIO()
    torch.save(qmodel.state_dict(), buffer)
    buffer.seek(0)
    fresh = quantize(model(), weights="int8", activations="int8", activations_mode="dynamic")
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = outlier_batches(1)[0]
    assert torch.equal(fresh(x), qmodel(x))


def test_bad_arguments_are_refused():
    qmodel = quantize(model(), weights="int8", activations="int8")
    with pytest.raises(ValueError, match="alpha"):
        smooth(qmodel, outlier_batches(), alpha=1.5)
    with pytest.raises(ValueError, match="batch"):
        smooth(qmodel, [])
    with pytest.raises(ValueError, match="activations"):
        smooth(quantize(model(), weights="int8"), outlier_batches())
