"""ModuleConfig: one validated, versioned config per module, applied by quantize() and
apply_module_config(), kept by the module as `qconfig`, stored by to_dict / from_dict."""

import copy

import pytest
import torch
from torch import nn

from quanta.qmodules import (
    ModuleConfig,
    QLinear,
    apply_module_config,
    freeze,
    quantize,
    to_module_config,
)
from quanta.qtypes import qfloat8_e4m3fn, qint4, qint8


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))


def test_names_become_qtypes_and_the_config_is_frozen():
    config = ModuleConfig(weights="int4", activations="fp8")
    assert config.weights is qint4 and config.activations is qfloat8_e4m3fn
    with pytest.raises(AttributeError):
        config.weights = qint8


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"weights": "int3"}, ValueError, "weights"),
        ({"weights": 4}, TypeError, "weights"),
        ({"activations": "int4"}, ValueError, "8-bit"),
        ({"activations_mode": "lazy"}, ValueError, "activations_mode"),
        ({"group_size": 0}, ValueError, "group_size"),
        ({"group_size": 32.0}, TypeError, "group_size"),
        ({"input_rotation": -2}, ValueError, "input_rotation"),
        ({"optimizer": 3}, TypeError, "optimizer"),
        ({"input_smoothing": 1}, TypeError, "input_smoothing"),
    ],
)
def test_invalid_fields_are_refused_when_the_config_is_built(fields, error, message):
    with pytest.raises(error, match=message):
        ModuleConfig(**fields)


def test_a_quantized_module_returns_its_resolved_config():
    model = quantize(mlp(), weights="int4", activations="int8")
    config = model[0].qconfig
    assert (config.weights, config.group_size, config.activations) == (qint4, 64, qint8)
    assert config.output_quantized and not config.float_zero_point
    weight_only = quantize(mlp(), weights="int8", activations_mode="dynamic")
    # settings that mean nothing for a module are cleared: it reads back as it is stored
    assert weight_only[0].qconfig == ModuleConfig(weights=qint8, output_quantized=False)


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_group_size_is_refused_for_weights_without_groups(weights):
    with pytest.raises(ValueError, match="group_size=32 applies to 2/4-bit weights only"):
        quantize(mlp(), weights=weights, group_size=32)


def test_the_module_keeps_its_config_up_to_date():
    model = quantize(mlp(), weights="int8", activations="int8")
    model[0].smooth_input(torch.full((64,), 2.0))
    model[0].rotate_input(16)
    model[2].disable_output_quantization()
    assert model[0].qconfig.input_smoothing and model[0].qconfig.input_rotation == 16
    assert not model[2].qconfig.output_quantized


@pytest.mark.parametrize("weights", ["int2", "int4", "int8", "fp8"])
def test_to_dict_and_from_dict_round_trip(weights):
    model = freeze(quantize(mlp(), weights=weights, activations="int8"))
    for module in (model[0], model[2]):
        stored = module.qconfig.to_dict()
        again = ModuleConfig.from_dict(copy.deepcopy(stored))
        assert again == module.qconfig
        assert again.to_dict() == stored


def test_from_dict_refuses_a_damaged_or_inconsistent_entry():
    stored = freeze(quantize(mlp(), weights="int4"))[0].qconfig.to_dict()
    with pytest.raises(TypeError, match="fields"):
        ModuleConfig.from_dict({**stored, "bits": 4})
    with pytest.raises(TypeError, match="wrong type"):
        ModuleConfig.from_dict({**stored, "group_size": "64"})
    with pytest.raises(ValueError, match="group_size None"):
        ModuleConfig.from_dict({**stored, "group_size": None})
    with pytest.raises(ValueError, match="float zero points"):
        ModuleConfig.from_dict(
            {**stored, "weights": "int8", "group_size": None, "float_zero_point": True}
        )


def test_overrides_take_a_module_config_or_a_dict_of_its_fields():
    model = quantize(
        mlp(),
        weights="int4",
        group_size=32,
        overrides={"0": ModuleConfig(weights="int8"), "2": {"weights": "int2"}},
    )
    assert model[0].qconfig.weights is qint8 and model[0].qconfig.group_size is None
    # a dict merges its fields over the defaults: the default group size stays
    assert model[2].qconfig.weights.name == "qint2" and model[2].qconfig.group_size == 32
    # ...unless its weights have no groups (8-bit): then the default group size is dropped
    model = quantize(mlp(), weights="int4", group_size=32, overrides={"2": {"weights": "int8"}})
    assert model[2].qconfig.weights is qint8 and model[2].qconfig.group_size is None
    with pytest.raises(ValueError, match=r"overrides\['2'\].*weights"):
        quantize(mlp(), overrides={"2": {"weights": "int5"}})
    with pytest.raises(TypeError, match="ModuleConfig or a dict"):
        to_module_config("int4", "override")


def test_apply_module_config_checks_everything_before_changing_the_module():
    linear = nn.Linear(48, 8)
    with pytest.raises(ValueError, match="group_size 32"):
        apply_module_config(linear, ModuleConfig(weights="int4", group_size=32))
    with pytest.raises(ValueError, match="input_rotation block 32"):
        apply_module_config(
            linear, ModuleConfig(weights="int8", activations="int8", input_rotation=32)
        )
    with pytest.raises(TypeError, match="no quantized class"):
        apply_module_config(nn.ReLU(), ModuleConfig(activations="int8"))
    assert type(linear) is nn.Linear
    quantized = apply_module_config(linear, ModuleConfig(weights="int8", input_smoothing=True))
    assert isinstance(quantized, QLinear) and quantized.input_smoothing.shape == (48,)
    with pytest.raises(ValueError, match="already quantized"):
        apply_module_config(quantized, ModuleConfig(weights="int8"))


def test_load_float_weight_freezes_what_quantize_and_freeze_would_store():
    model = quantize(mlp(), weights="int4")
    with torch.device("meta"):
        skeleton = quantize(mlp(), weights="int4")
    skeleton[0].load_float_weight(mlp()[0].weight.detach())
    assert skeleton[0].is_frozen
    expected = freeze(model)[0].weight
    assert torch.equal(skeleton[0].weight.codes, expected.codes)
    with pytest.raises(ValueError, match="expected a float weight of shape"):
        skeleton[2].load_float_weight(torch.zeros(16, 16))


def test_activation_scales_are_set_in_their_dtype_and_only_by_name():
    model = quantize(mlp().to(torch.bfloat16), weights="int8", activations="int8")
    model[0].set_activation_scales({"input_scale": torch.tensor(0.5)}, torch.device("cpu"))
    assert model[0].activation_scales()["input_scale"].dtype == torch.bfloat16
    assert float(model[0].input_scale) == 0.5
    with pytest.raises(ValueError, match="no activation scale 'scale'"):
        model[0].set_activation_scales({"scale": torch.tensor(1.0)}, torch.device("cpu"))
