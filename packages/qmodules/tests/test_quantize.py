"""quantize(): module selection, overrides, group sizes, and early argument validation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quanta.qmodules import QConv2d, QLinear, QModuleMixin, freeze, quantize
from quanta.qtypes import qfloat8_e4m3fn, qint4, qint8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.Linear(256, 256)
        self.mlp = nn.Sequential(nn.Linear(256, 96), nn.GELU(), nn.Linear(96, 256))
        self.conv = nn.Conv2d(4, 8, 3)
        self.lm_head = nn.Linear(256, 100)

    def forward(self, x):
        return self.lm_head(self.mlp(self.attention(x)))


def block() -> Block:
    torch.manual_seed(0)
    return Block()


def quantized_names(model: nn.Module) -> dict[str, object]:
    return {
        name: module.qconfig.weights
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin)
    }


def test_quantizes_every_linear_and_conv_in_place_and_returns_the_model():
    model = block()
    assert quantize(model, weights="int8") is model
    assert isinstance(model.attention, QLinear) and isinstance(model.conv, QConv2d)
    assert set(quantized_names(model)) == {"attention", "mlp.0", "mlp.2", "conv", "lm_head"}


def test_include_and_exclude_patterns_exclude_wins():
    model = quantize(block(), weights="int4", include=["mlp.*", "lm_head"], exclude="lm_*")
    assert set(quantized_names(model)) == {"mlp.0", "mlp.2"}


@pytest.mark.parametrize("weights", [qint4, "int4", "qint4", "INT4"])
def test_weights_accept_qtypes_names_and_aliases(weights):
    assert quantize(block(), weights=weights).attention.qconfig.weights is qint4


@pytest.mark.parametrize("weights", ["float8", "fp8"])
def test_fp8_aliases(weights):
    assert quantize(block(), weights=weights).attention.weight.codes.dtype == torch.float8_e4m3fn


def test_overrides_merge_in_order_and_none_leaves_a_module_float():
    model = quantize(
        block(),
        weights="int8",
        overrides={
            "mlp.*": {"weights": "int4", "group_size": 32},
            "mlp.2": {"group_size": 96},
            "lm_head": {"weights": None},
        },
    )
    assert quantized_names(model) == {
        "attention": qint8,
        "mlp.0": qint4,
        "mlp.2": qint4,
        "conv": qint8,
    }
    assert model.mlp[0].qconfig.group_size == 32 and model.mlp[2].qconfig.group_size == 96
    assert type(model.lm_head) is nn.Linear


def test_overrides_set_activations_per_module():
    model = quantize(
        block(),
        weights="int8",
        activations="int8",
        overrides={"mlp.*": {"activations": None}, "conv": {"activations": "fp8"}},
    )
    assert model.attention.qconfig.activations is qint8
    assert model.mlp[0].qconfig.activations is None and model.mlp[2].qconfig.activations is None
    assert model.conv.qconfig.activations is qfloat8_e4m3fn
    assert not hasattr(model.mlp[0], "input_scale") and hasattr(model.conv, "input_scale")
    only = quantize(block(), weights="int8", overrides={"attention": {"activations": "int8"}})
    assert only.attention.qconfig.activations is qint8 and only.conv.qconfig.activations is None


@pytest.mark.parametrize(("in_features", "expected"), [(512, 128), (192, 64), (96, 32), (100, 100)])
def test_default_group_size(in_features, expected):
    module = quantize(nn.Linear(in_features, 8), weights="int4")
    assert module.qconfig.group_size == expected


def test_user_group_size_is_honored_and_8bit_weights_stay_per_channel():
    model = quantize(
        nn.Sequential(nn.Linear(512, 8), nn.Linear(100, 8)),
        weights="int4",
        group_size=256,
        overrides={"1": {"weights": "int8"}},
    )
    assert model[0].qconfig.group_size == 256 and model[0].weight.scale.shape == (8, 2)
    assert model[1].qconfig.group_size is None and model[1].weight.scale.shape == (8, 1)


def test_conv_group_size_counts_channels_per_group_times_kernel():
    conv = quantize(nn.Conv2d(8, 16, 3, groups=2), weights="int4")
    assert conv.qconfig.group_size == 36  # K = 8/2 * 3 * 3
    with pytest.raises(ValueError, match=r"group_size=32.*K=36"):
        quantize(nn.Conv2d(8, 16, 3, groups=2), weights="int4", group_size=32)


def test_requantizing_with_other_settings_raises_and_the_same_settings_are_kept():
    model = quantize(block(), weights="int4")
    with pytest.raises(ValueError, match=r"'attention' is already quantized.*exclude"):
        quantize(model, weights="int8")
    assert model.attention.qconfig.weights is qint4
    freeze(quantize(model, weights="int4"))  # the same settings again: nothing to change
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, weights="int4", group_size=32)
    # the rest of the model, by excluding what is quantized: allowed
    staged = quantize(block(), weights="int4", include="mlp.*")
    quantize(staged, weights="int8", exclude="mlp.*")
    assert staged.mlp[0].qconfig.weights is qint4 and staged.attention.qconfig.weights is qint8


@pytest.mark.parametrize("argument", ["include", "exclude", "overrides"])
def test_a_pattern_that_matches_no_module_is_refused(argument):
    value = {"lm_hed": {"weights": "int8"}} if argument == "overrides" else ["mlp.*", "lm_hed"]
    with pytest.raises(ValueError, match=f"{argument} pattern 'lm_hed' matches no"):
        quantize(block(), weights="int4", **{argument: value})
    # a container's name matches no quantizable module: its children need 'mlp.*'
    with pytest.raises(ValueError, match="'mlp' matches no"):
        quantize(block(), weights="int4", exclude="mlp")


INVALID_ARGUMENTS = [
    ({"weights": "int3"}, ValueError, "qint4"),
    ({"weights": 4}, TypeError, "weights"),
    ({"activations": "int4"}, ValueError, "activations"),
    ({"activations": "int7"}, ValueError, "activations"),
    ({"activations": "int8", "activations_mode": "lazy"}, ValueError, "activations_mode"),
    ({"activations": "fp8", "activations_mode": 1}, ValueError, "activations_mode"),
    ({"group_size": 0}, ValueError, "group_size"),
    ({"group_size": -32}, ValueError, "group_size"),
    ({"group_size": 32.0}, TypeError, "group_size"),
    ({"group_size": True}, TypeError, "group_size"),
    ({"group_size": 64}, ValueError, r"group_size=64.*K=96.*'mlp.2'"),
    ({"include": 3}, TypeError, "include"),
    ({"exclude": ["lm_head", None]}, TypeError, "exclude"),
    ({"overrides": ["mlp.*"]}, TypeError, "overrides"),
    ({"overrides": {"mlp.*": "int4"}}, TypeError, "overrides"),
    ({"overrides": {"mlp.*": {"bits": 4}}}, ValueError, "allowed keys"),
    ({"overrides": {"mlp.*": {"weights": "int5"}}}, ValueError, "overrides"),
    ({"overrides": {"mlp.*": {"group_size": "64"}}}, TypeError, "group_size"),
    ({"overrides": {"mlp.*": {"activations": "int4"}}}, ValueError, r"overrides.*activations"),
    (
        {"overrides": {"lm_head": {"group_size": 96}}},
        ValueError,
        r"group_size=96.*K=256.*'lm_head'",
    ),
    ({"overrides": {"conv": {"group_size": 32}}}, ValueError, r"K=36.*'conv'"),
]


@pytest.mark.parametrize(("arguments", "error", "message"), INVALID_ARGUMENTS)
def test_invalid_arguments_raise_before_the_model_changes(arguments, error, message):
    model = block()
    before = copy.deepcopy(model.state_dict())
    classes = [type(module) for module in model.modules()]
    arguments = {"weights": "int4", **arguments}
    with pytest.raises(error, match=message):
        quantize(model, **arguments)
    assert [type(module) for module in model.modules()] == classes
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model"):
        quantize(nn.Linear(4, 4).weight, weights="int8")


class PaddedConv2d(nn.Conv2d):
    """Pads its input (reflect) before convolving: a subclass with its own forward."""

    def forward(self, x):
        x = F.pad(x, (2, 1, 2, 1), mode="reflect")
        return self._conv_forward(x, self.weight, self.bias)


class ScaledLinear(nn.Linear):
    """Calls super().forward and scales the result."""

    def forward(self, x):
        return 2 * super().forward(x)


# int8 per-channel weights: the conv output stays within 1% of the float subclass's output
SUBCLASS_MAX_RELATIVE_ERROR = 0.01


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_subclass_with_own_forward_keeps_its_behaviour(weights, relative_error, uniform_inputs):
    torch.manual_seed(0)
    conv = PaddedConv2d(4, 16, 3)
    inputs = uniform_inputs(2, 4, 9, 9)
    expected = conv(inputs)
    plain = F.conv2d(inputs, conv.weight, conv.bias)
    assert plain.shape != expected.shape  # the padding matters

    quantized = freeze(quantize(copy.deepcopy(conv), weights=weights))
    assert isinstance(quantized, QConv2d) and isinstance(quantized, PaddedConv2d)
    out = quantized(inputs)
    assert out.shape == expected.shape
    bound = SUBCLASS_MAX_RELATIVE_ERROR if weights == "int8" else 0.1
    assert relative_error(out, expected) < bound


def test_subclass_calling_super_forward_keeps_its_behaviour(relative_error, uniform_inputs):
    torch.manual_seed(0)
    linear = ScaledLinear(128, 32)
    inputs = uniform_inputs(4, 128)
    quantized = quantize(copy.deepcopy(linear), weights="int8")
    assert isinstance(quantized, QLinear) and isinstance(quantized, ScaledLinear)
    with torch.no_grad():
        assert relative_error(quantized(inputs), linear(inputs)) < SUBCLASS_MAX_RELATIVE_ERROR


def test_quantized_class_is_created_once_per_float_class():
    first = quantize(PaddedConv2d(4, 8, 3), weights="int8")
    second = quantize(PaddedConv2d(4, 8, 3), weights="int4")
    assert type(first) is type(second)
    assert type(quantize(nn.Linear(4, 4), weights="int8")) is QLinear
