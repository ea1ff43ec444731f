"""QActivationTensor: which ops stay quantized, which fall back to float, and how."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from quanta.qmodules import QActivationTensor
from quanta.qtypes import qfloat8_e4m3fn, qfloat8_e5m2, qint8

QTYPES = [qint8, qfloat8_e4m3fn, qfloat8_e5m2]


def quantized(x: torch.Tensor, qtype=qint8) -> QActivationTensor:
    scale = x.abs().amax().float() / qtype.qmax
    return QActivationTensor.quantize(x, scale, qtype)


@pytest.mark.parametrize("qtype", QTYPES)
def test_quantize_round_trip_keeps_shape_and_dtype(qtype, uniform_inputs):
    for dtype in (torch.float32, torch.bfloat16):
        x = uniform_inputs(2, 3, 8, dtype=dtype)
        q = quantized(x, qtype)
        assert q.shape == x.shape and q.dtype == dtype and q.codes.dtype == qtype.dtype
        assert q.scale.dim() == 0 and q.is_per_tensor
        # within half a step of the int8 grid; float8 keeps a relative precision
        tolerance = 0.51 * float(q.scale) if qtype is qint8 else 0.13 * float(x.abs().max())
        assert float((q.dequantize().float() - x.float()).abs().max()) <= tolerance


@pytest.mark.parametrize(
    "op",
    [
        lambda t: t.view(2, 24),
        lambda t: t.reshape(6, 8),
        lambda t: t.transpose(1, 2),
        lambda t: t.permute(2, 0, 1),
        lambda t: t[:, 1:],
        lambda t: t.unsqueeze(0).expand(3, 2, 3, 8),
        lambda t: t.transpose(1, 2).contiguous().view(2, 24),
        lambda t: torch.relu(t),
        lambda t: F.relu(t),
    ],
    ids=["view", "reshape", "transpose", "permute", "slice", "expand", "t-view", "relu", "F.relu"],
)
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("mode", [contextlib.nullcontext, torch.inference_mode])
def test_layout_ops_and_relu_stay_quantized_and_exact(op, qtype, mode, uniform_inputs):
    q = quantized(uniform_inputs(2, 3, 8), qtype)  # outside inference mode, used in either
    with mode():
        result = op(q)
    assert isinstance(result, QActivationTensor) and result.scale is q.scale
    assert torch.equal(result.dequantize(), op(q.dequantize()))


def test_in_place_relu_clears_negative_codes(uniform_inputs):
    q = quantized(uniform_inputs(4, 8))
    expected = torch.relu(q.dequantize())
    result = torch.nn.ReLU(inplace=True)(q)
    assert result is q and torch.equal(q.dequantize(), expected)


def test_cat_of_equal_scales_stays_quantized_other_scales_go_float(uniform_inputs):
    x = uniform_inputs(2, 4)
    q = quantized(x)
    same = QActivationTensor.quantize(x * 0.5, q.scale.clone(), qint8)
    joined = torch.cat([q, same], dim=0)
    assert isinstance(joined, QActivationTensor)
    assert torch.equal(joined.dequantize(), torch.cat([q.dequantize(), same.dequantize()]))
    other = quantized(x * 3)
    mixed = torch.cat([q, other], dim=-1)
    assert type(mixed) is torch.Tensor
    assert torch.equal(mixed, torch.cat([q.dequantize(), other.dequantize()], dim=-1))


@pytest.mark.parametrize("fn", [F.gelu, F.silu, torch.tanh, lambda t: t + 1, lambda t: t * t])
def test_other_ops_fall_back_to_float(fn, uniform_inputs):
    q = quantized(uniform_inputs(3, 8))
    result = fn(q)
    assert type(result) is torch.Tensor
    assert torch.equal(result, fn(q.dequantize()))


@pytest.mark.parametrize("qtype", QTYPES)
def test_softmax_gives_probabilities_quantized_at_one_over_qmax(qtype, uniform_inputs):
    q = quantized(uniform_inputs(2, 4, 16) * 4, qtype)
    probabilities = torch.softmax(q, dim=-1)
    assert isinstance(probabilities, QActivationTensor) and probabilities.qtype == qtype
    assert float(probabilities.scale) == pytest.approx(1 / qtype.qmax)
    expected = torch.softmax(q.dequantize(), dim=-1)
    step = 1 / qtype.qmax if qtype is qint8 else 1 / 8  # int8 grid, else float8 relative step
    assert float((probabilities.dequantize() - expected).abs().max()) <= step


def test_softmax_with_a_dtype_argument_returns_that_dtype(uniform_inputs):
    q = quantized(uniform_inputs(2, 16, dtype=torch.bfloat16))
    probabilities = F.softmax(q, dim=-1, dtype=torch.float32)
    assert probabilities.dtype == torch.float32


@pytest.mark.parametrize("qtype", QTYPES)
def test_matmul_of_two_quantized_activations_multiplies_codes(qtype, uniform_inputs):
    query = quantized(uniform_inputs(2, 3, 5, 8, seed=1), qtype)
    key = quantized(uniform_inputs(2, 3, 5, 8, seed=2), qtype)
    scores = torch.matmul(query, key.transpose(-1, -2))
    assert type(scores) is torch.Tensor and scores.shape == (2, 3, 5, 5)
    expected = query.dequantize() @ key.dequantize().transpose(-1, -2)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    flat = torch.bmm(query.reshape(6, 5, 8), key.reshape(6, 5, 8).transpose(1, 2))
    torch.testing.assert_close(flat, expected.reshape(6, 5, 5), rtol=1e-5, atol=1e-6)


def test_matmul_with_a_float_operand_runs_in_float(uniform_inputs):
    q = quantized(uniform_inputs(4, 8))
    weight = uniform_inputs(8, 3)
    assert torch.equal(q @ weight, q.dequantize() @ weight)


def test_per_token_scales_quantize_each_row_and_dequantize_for_other_ops(uniform_inputs):
    x = uniform_inputs(3, 16) * torch.tensor([[1.0], [10.0], [100.0]])
    q = QActivationTensor.quantize_per_token(x, qint8)
    assert q.scale.shape == (3, 1) and not q.is_per_tensor
    torch.testing.assert_close(q.scale, x.abs().amax(-1, keepdim=True) / 127)
    assert float(((q.dequantize() - x).abs() / q.scale).max()) <= 0.51
    assert type(q.transpose(0, 1)) is torch.Tensor  # views need a per-tensor scale


def test_in_place_ops_other_than_relu_are_refused(uniform_inputs):
    q = quantized(uniform_inputs(4, 8))
    with pytest.raises(NotImplementedError, match="in place"):
        q.add_(1)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_static_activations_keep_nan_and_saturate_inf(
    qtype, dtype, uniform_inputs, with_non_finite
):
    """Per tensor: the float model clamps to the code range and keeps NaN. float8 codes hold the
    NaN; int8 has no NaN code, so the one scale turns NaN and the whole tensor with it."""
    scale = torch.tensor(1.5 / qtype.qmax)
    limits = (qtype.qmin * float(scale), qtype.qmax * float(scale))
    inf_only = with_non_finite(uniform_inputs(6, 16, dtype=dtype), nan=False)
    values = QActivationTensor.quantize(inf_only, scale, qtype).dequantize()
    expected = inf_only.float().clamp(*limits)
    tolerance = 0.51 * float(scale) if qtype is qint8 else 0.13 * 1.5  # as in the round trip
    torch.testing.assert_close(values.float(), expected, rtol=0, atol=tolerance)

    x = with_non_finite(uniform_inputs(6, 16, dtype=dtype, seed=7))
    q = QActivationTensor.quantize(x, scale, qtype)
    assert q.is_per_tensor
    values = q.dequantize()
    if qtype is qint8:
        assert values.isnan().all()
    else:
        assert torch.equal(values.isnan(), x.isnan())
        kept = ~x.isnan()
        expected = x.float().clamp(*limits)[kept]
        torch.testing.assert_close(values.float()[kept], expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dynamic_rows_holding_nan_or_inf_dequantize_to_nan(
    qtype, dtype, uniform_inputs, with_non_finite
):
    """Per token: a row holding NaN gets a NaN scale, one holding ±Inf an infinite one; both
    dequantize to NaN (as x / s * s does in float); the other rows are quantized as usual."""
    x = with_non_finite(uniform_inputs(6, 16, dtype=dtype))
    q = QActivationTensor.quantize_per_token(x, qtype)
    values = q.dequantize()
    non_finite = ~x.isfinite().all(dim=-1)
    assert non_finite.tolist() == [False, True, False, True, True, False]
    assert values[non_finite].isnan().all()
    finite = values[~non_finite].float()
    torch.testing.assert_close(finite, x[~non_finite].float(), rtol=0.13, atol=0.51 / 127)


@pytest.mark.parametrize("qtype", QTYPES)
def test_matmul_of_quantized_activations_keeps_nan(qtype, uniform_inputs, with_non_finite):
    query = quantized(uniform_inputs(6, 8, seed=1), qtype)
    x = with_non_finite(uniform_inputs(6, 8, seed=2), inf=False)
    key = QActivationTensor.quantize(x, torch.tensor(1 / qtype.qmax), qtype)
    scores = torch.matmul(query, key.transpose(0, 1))
    float_nan = (query.dequantize() @ x.transpose(0, 1)).isnan()
    assert float_nan.any() and scores.isnan()[float_nan].all()
    if qtype is not qint8:  # float8: exactly where the float product has them
        assert torch.equal(scores.isnan(), float_nan)
