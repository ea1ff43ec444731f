"""The compact JSON form of a QuantizationConfig: the default entry once, then what differs."""

from __future__ import annotations

import json

import pytest

from quanta.qio import CorruptCheckpointError, QuantizationConfig
from quanta.qmodules import ModuleConfig

# SmolLM2-135M's 210 quantized Linears: 30 layers of 7 projections.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NAMES = [f"model.layers.{i}.{p}" for i in range(30) for p in PROJECTIONS]


def _config() -> QuantizationConfig:
    int4 = ModuleConfig(weights="qint4", group_size=64).for_module(576, "a layer")
    modules = dict.fromkeys(NAMES, int4)
    modules["model.layers.0.down_proj"] = ModuleConfig(weights="qint8").for_module(576, "down")
    return QuantizationConfig(modules, {"lm_head.weight": "model.embed_tokens.weight"})


def test_compact_form_round_trips_and_keeps_every_name():
    config = _config()
    compact = config.to_json(compact=True)
    assert list(compact["modules"]) == NAMES
    assert compact["modules"]["model.layers.1.q_proj"] == {}
    assert QuantizationConfig.from_json(json.dumps(compact)) == config
    assert QuantizationConfig.from_json(config.to_json()) == config  # the full form still reads


def test_compact_form_is_a_fraction_of_the_full_one():
    config = _config()
    full = json.dumps(config.to_json(), indent=2)
    compact = json.dumps(config.to_json(compact=True), indent=2)
    assert len(compact) < len(full) / 5  # measured: 68 KB -> 9 KB, the module names


@pytest.mark.parametrize(
    "damage",
    [
        lambda doc: doc.update(default=[]),
        lambda doc: doc["modules"].update({"model.layers.1.q_proj": {"bits": 4}}),
        lambda doc: doc["default"].pop("weights"),
    ],
)
def test_a_damaged_compact_form_is_refused(damage):
    document = _config().to_json(compact=True)
    damage(document)
    with pytest.raises(CorruptCheckpointError):
        QuantizationConfig.from_json(document)
