"""The Diffusers QuantaConfig: registration, the shared settings checks, JSON round trip."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub
pytest.importorskip("diffusers")

from diffusers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    DiffusersAutoQuantizer,
)

import quanta.qintegrations  # noqa: F401  (installs the registration hook)
from quanta.qintegrations.diffusers import (
    QuantaConfig,
    QuantaDiffusersQuantizer,
    QuantaMethod,
)
from quanta.qintegrations.settings import QuantaSettings


def test_registered_in_diffusers_mappings_with_a_str_enum_method():
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["quanta"] is QuantaConfig
    assert AUTO_QUANTIZER_MAPPING["quanta"] is QuantaDiffusersQuantizer
    config = QuantaConfig()
    assert config.quant_method is QuantaMethod.QUANTA and config.quant_method.value == "quanta"
    assert isinstance(DiffusersAutoQuantizer.from_config(config), QuantaDiffusersQuantizer)


def test_registration_waits_for_diffusers_in_a_fresh_interpreter():
    code = (
        "import sys, quanta.qintegrations; assert 'diffusers' not in sys.modules; "
        "from diffusers.models.modeling_utils import ModelMixin; "  # imports the quantizers
        "from diffusers.quantizers.auto import AUTO_QUANTIZER_MAPPING as m; "
        "print(m['quanta'].__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "QuantaDiffusersQuantizer"


def test_same_arguments_as_the_transformers_config():
    """Pipeline-level quantization with quant_backend="quanta" needs equal __init__ signatures."""
    assert QuantaConfig.__init__ is QuantaSettings.__init__
    transformers = pytest.importorskip("transformers")  # noqa: F841
    from quanta.qintegrations.transformers import QuantaConfig as TransformersQuantaConfig

    assert TransformersQuantaConfig.__init__ is QuantaSettings.__init__


@pytest.mark.parametrize(
    ("arguments", "error", "names"),
    [
        ({"weights": "int3"}, ValueError, "weights"),
        ({"activations_mode": "eager"}, ValueError, "activations_mode"),
        ({"optimizer": "gptq"}, ValueError, "calibration"),
        ({"modules_to_not_convert": "proj_out"}, TypeError, "modules_to_not_convert"),
        ({"modules": {"config_version": 99}}, ValueError, "version"),
        ({"bits": 4}, TypeError, "QuantaConfig got unknown arguments"),
    ],
)
def test_bad_arguments_raise_early(arguments, error, names):
    with pytest.raises(error, match=names):
        QuantaConfig(**arguments)


def test_dict_round_trip():
    config = QuantaConfig(weights="int4", group_size=32, modules_to_not_convert=["proj_out"])
    again = QuantaConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert '"quant_method": "quanta"' in repr(again)


def test_from_single_file_refuses_what_quanta_did_not_write(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "float.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="not written by save_pretrained"):
        QuantaConfig.from_single_file(path)
    with pytest.raises(TypeError, match="path"):
        QuantaConfig.from_single_file(3)


def test_the_transformers_config_converts_with_the_same_settings():
    pytest.importorskip("transformers")
    from quanta.qintegrations.transformers import QuantaConfig as TransformersQuantaConfig

    given = TransformersQuantaConfig(weights="int4", group_size=32, modules_to_not_convert=["x"])
    config = DiffusersAutoQuantizer.from_config(given).quantization_config
    assert type(config) is QuantaConfig and config.arguments() == given.arguments()
    assert config.quant_method is QuantaMethod.QUANTA
    with pytest.raises(TypeError, match=r"quanta\.qintegrations\.diffusers\.QuantaConfig"):
        QuantaDiffusersQuantizer({"weights": "int8"})
