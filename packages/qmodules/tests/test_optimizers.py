"""Weight optimizers: the interface, names, validation at quantize time, and what freeze stores."""

import pytest
import torch
from torch import nn

from quanta.qmodules import (
    AbsmaxOptimizer,
    MinmaxOptimizer,
    WeightOptimizer,
    WeightParts,
    freeze,
    quantize,
    register_weight_optimizer,
    weight_memory,
)
from quanta.qtypes import PACKED_AFFINE, qint2, qint4, qint8


class HalfStepZero(WeightOptimizer):
    """A test optimizer: min-max parameters with the zero point moved by half a code, as a float."""

    name = "half-step"
    float_zero_point = True

    layouts = (PACKED_AFFINE,)

    def optimize(self, weight, qtype, group_size, module=None):
        parts = MinmaxOptimizer().optimize(weight, qtype, group_size)
        zero_point = parts.zero_point.to(weight.dtype) + 0.5
        codes = torch.ops.quanta.quantize_affine(
            weight, parts.scale, zero_point, qtype.bits, group_size
        )
        return WeightParts(codes, parts.scale, zero_point)


class NeverReady(MinmaxOptimizer):
    name = "never-ready"

    def check_ready(self, module, name):
        raise RuntimeError(f"{name} is not ready")


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))


def test_default_optimizers_store_what_on_the_fly_quantization_computes():
    x = torch.randn(4, 64)
    for weights, optimizer in (("int8", "absmax"), ("int4", "minmax"), ("int2", "minmax")):
        reference = quantize(model(), weights)
        on_the_fly = reference(x)
        optimized = freeze(quantize(model(), weights, optimizer=optimizer))
        assert torch.equal(optimized(x), on_the_fly)
        assert optimized[0].qconfig.optimizer.name == optimizer


def test_optimizer_names_resolve_and_unknown_names_are_refused():
    assert isinstance(quantize(model(), "int8", optimizer="absmax")[0].qconfig.optimizer,
                      AbsmaxOptimizer)  # fmt: skip
    with pytest.raises(ValueError, match="not a known weight optimizer"):
        quantize(model(), "int4", optimizer="no-such-optimizer")
    with pytest.raises(TypeError, match="optimizer must be"):
        quantize(model(), "int4", optimizer=3)


def test_an_optimizer_that_does_not_support_the_qtype_is_a_value_error_before_any_change():
    fresh = model()
    with pytest.raises(ValueError, match=r"minmax.*int8.*module '0'"):
        quantize(fresh, qint8, optimizer="minmax")
    with pytest.raises(ValueError, match=r"absmax.*int4.*module '2'"):
        quantize(fresh, qint8, optimizer="absmax", overrides={"2": {"weights": qint4}})
    assert all(type(module) in (nn.Linear, nn.ReLU) for module in fresh)  # untouched


def test_overrides_choose_an_optimizer_per_module():
    quantized = quantize(
        model(), qint4, optimizer="minmax",
        overrides={"2": {"weights": qint8, "optimizer": "absmax"}},
    )  # fmt: skip
    assert quantized[0].qconfig.optimizer.name == "minmax"
    assert quantized[2].qconfig.optimizer.name == "absmax"
    quantized = quantize(model(), qint4, optimizer="minmax", overrides={"2": {"optimizer": None}})
    assert quantized[2].qconfig.optimizer is None
    assert "optimizer=minmax" in repr(quantized[0])


def test_registered_names_build_a_fresh_optimizer():
    register_weight_optimizer(HalfStepZero.name, HalfStepZero)
    quantized = quantize(model(), qint2, optimizer="half-step")
    assert isinstance(quantized[0].qconfig.optimizer, HalfStepZero)


def test_freeze_asks_every_optimizer_before_changing_any_module():
    quantized = quantize(model(), qint4, overrides={"2": {"optimizer": NeverReady()}})
    with pytest.raises(RuntimeError, match="2 is not ready"):
        freeze(quantized)
    assert not quantized[0].is_frozen


def test_float_zero_points_are_stored_counted_and_round_trip_bit_identical():
    x = torch.randn(4, 64)
    quantized = quantize(model(), qint4, group_size=32, optimizer=HalfStepZero())
    planned = weight_memory(quantized)
    freeze(quantized)
    zero_point = quantized[0].weight.zero_point
    assert zero_point.dtype == torch.float32
    assert torch.all(zero_point.frac() == 0.5)
    assert weight_memory(quantized) == planned  # float zero points: 4 bytes per group
    plain = freeze(quantize(model(), qint4, group_size=32))
    groups = 32 * 2 + 16 * 1
    assert planned.quantized_bytes - weight_memory(plain).quantized_bytes == groups * 3

    state = quantized.state_dict()
    fresh = quantize(model(), qint4, group_size=32)  # no optimizer needed to load
    fresh.load_state_dict(state)
    assert fresh[0].is_frozen
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, state[key]) and tensor.dtype == state[key].dtype, key
    assert torch.equal(fresh(x), quantized(x))


def test_loading_refuses_a_zero_point_of_an_integer_dtype_other_than_uint8():
    state = freeze(quantize(model(), qint4, group_size=32)).state_dict()
    state["0.weight.zero_point"] = state["0.weight.zero_point"].to(torch.int32)
    with pytest.raises(RuntimeError, match=r"zero_point has dtype torch\.int32, expected uint8 or"):
        quantize(model(), qint4, group_size=32).load_state_dict(state)
