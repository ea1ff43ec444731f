"""HQQ: lower reconstruction error than min-max, float zero points, optional input weighting."""

import pytest
import torch
from torch import nn

from quanta.qcalib import HQQ, optimize_weights
from quanta.qmodules import MinmaxOptimizer, freeze, quantize, weight_memory
from quanta.qtypes import qint2, qint4, qint8


def heavy_tailed_weight(rows: int = 128, columns: int = 256) -> torch.Tensor:
    torch.manual_seed(0)
    weight = torch.randn(rows, columns) * 0.02
    outliers = torch.rand(rows, columns) < 0.003
    return torch.where(outliers, weight * 8, weight)


def reconstruction_error(weight, parts, group_size) -> float:
    restored = torch.ops.quanta.dequantize_affine(
        parts.codes, parts.scale, parts.zero_point, group_size, weight.dtype
    )
    return (restored - weight).square().mean().item()


@pytest.mark.parametrize("qtype", [qint4, qint2])
@pytest.mark.parametrize("group_size", [32, 64, 256])
@pytest.mark.parametrize("refine_scale", [True, False])
def test_hqq_lowers_the_reconstruction_error_of_minmax(qtype, group_size, refine_scale):
    weight = heavy_tailed_weight()
    minmax = reconstruction_error(
        weight, MinmaxOptimizer().optimize(weight, qtype, group_size), group_size
    )
    hqq = reconstruction_error(
        weight, HQQ(refine_scale=refine_scale).optimize(weight, qtype, group_size), group_size
    )
    assert hqq < minmax


def test_hqq_zero_points_are_floats_in_the_weight_dtype():
    weight = heavy_tailed_weight().to(torch.bfloat16)
    parts = HQQ().optimize(weight, qint4, 64)
    assert parts.zero_point.dtype == parts.scale.dtype == torch.bfloat16
    assert parts.codes.dtype == torch.uint8 and int(parts.codes.max()) <= qint4.qmax


def test_hqq_by_name_freezes_a_model_whose_state_dict_round_trips_bit_identical():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(4, 128)
    quantized = quantize(model, "int4", optimizer="hqq")
    planned = weight_memory(quantized)
    freeze(quantized)
    assert weight_memory(quantized) == planned
    state = quantized.state_dict()
    torch.manual_seed(1)
    fresh = quantize(nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8)), "int4")
    fresh.load_state_dict(state)
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, state[key]) and tensor.dtype == state[key].dtype, key
    assert torch.equal(fresh(x), quantized(x))


def test_hqq_refuses_8bit_weights_at_quantize_time():
    with pytest.raises(ValueError, match=r"'hqq'.*int8.*module '0'"):
        quantize(nn.Sequential(nn.Linear(8, 8)), qint8, optimizer="hqq")


def test_hqq_weighted_by_calibration_inputs_lowers_the_output_error():
    torch.manual_seed(0)
    linear = nn.Linear(256, 64, bias=False)
    # a few input channels carry large activations, as in LLMs
    gains = torch.ones(256)
    gains[torch.randperm(256)[:8]] = 20.0
    batches = [torch.randn(64, 256) * gains for _ in range(4)]
    x = torch.cat(batches)
    reference = x @ linear.weight.detach().T

    def output_error(calibrate: bool) -> float:
        quantized = quantize(nn.Sequential(_copy(linear)), qint4, group_size=64, optimizer=HQQ())
        if calibrate:
            optimize_weights(quantized, batches, progress=False)
        freeze(quantized)
        return (quantized(x) - reference).square().mean().item()

    assert output_error(calibrate=True) < output_error(calibrate=False)


def _copy(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=False)
    copy.weight.data.copy_(linear.weight.data)
    return copy


def test_hqq_settings_are_checked():
    with pytest.raises(ValueError, match="lp_norm"):
        HQQ(lp_norm=0)
    with pytest.raises(ValueError, match="iterations"):
        HQQ(iterations=-1)
