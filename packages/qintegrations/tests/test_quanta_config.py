"""QuantaConfig as Transformers users expect it: modules_to_not_convert names as QuantoConfig and
bitsandbytes match them, JSON-safe fields, a compact config.json, and no silent no-op."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.quantizers.quantizers_utils import should_convert_module  # noqa: E402

from quanta.qcalib import HQQ  # noqa: E402
from quanta.qintegrations.transformers import QuantaConfig  # noqa: E402
from quanta.qio import QuantizationConfig  # noqa: E402
from quanta.qmodules import ModuleConfig, QModuleMixin  # noqa: E402
from quanta.qtypes import qint4, qint8  # noqa: E402


def _load(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def _float_linears(model):
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not isinstance(module, QModuleMixin)
    }


@torch.inference_mode()
def _logits(model, token_ids):
    return model(token_ids).logits


@pytest.mark.parametrize(
    "names",
    [["gate_proj"], ["model.layers.0"], ["mlp", "lm_head"], ["self_attn.q_proj", "layers.1"]],
)
def test_modules_to_not_convert_follows_transformers(tiny_llama_dir, names):
    """The Linears kept float are those whose qualified name holds a given name as whole
    dot-separated parts: all those Transformers' own rule (QuantoConfig, bitsandbytes, torchao)
    keeps float, and also those under a name in the middle ('mlp', 'layers.1')."""
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(modules_to_not_convert=names))
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    by_transformers = {name for name in linears if not should_convert_module(name, names)}
    expected = {name for name in linears if any(f".{p}." in f".{name}." for p in names)}
    assert _float_linears(model) == expected and by_transformers <= expected
    assert by_transformers and len(expected) < len(linears)


def test_fnmatch_patterns_keep_working(tiny_llama_dir):
    config = QuantaConfig(modules_to_not_convert=["layers.0.*", "*.o_proj"])
    model = _load(tiny_llama_dir, quantization_config=config)
    layer_0 = model.model.layers[0].named_modules(prefix="model.layers.0")
    assert _float_linears(model) == {
        *(name for name, _ in layer_0 if "proj" in name),
        "model.layers.1.self_attn.o_proj",
    }


def test_a_model_with_nothing_to_quantize_says_so(tmp_path):
    """GPT-2 with its whole `transformer` excluded: its only Linear is the tied lm_head, which
    Transformers' default leaves float."""
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    quanta_config = QuantaConfig(weights="int4", modules_to_not_convert=["transformer"])
    with pytest.warns(UserWarning, match=r"quantized no module of GPT2LMHeadModel.*Conv1D"):
        model = _load(tmp_path, quantization_config=quanta_config)
    assert not any(isinstance(m, QModuleMixin) for m in model.modules())


def test_a_quantized_model_gives_no_such_warning(tiny_llama_dir):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*quantized no module")
        _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int4"))


def test_qtype_and_optimizer_objects_become_names():
    config = QuantaConfig(
        weights=qint4,
        activations=qint8,
        optimizer=HQQ(),
        overrides={"*.mlp.*": ModuleConfig(weights=qint8), "*.o_proj": {"weights": qint8}},
        modules_to_not_convert=("lm_head",),
    )
    settings = config.to_dict()
    assert (settings["weights"], settings["activations"], settings["optimizer"]) == (
        "qint4",
        "qint8",
        "hqq",
    )
    assert settings["overrides"]["*.o_proj"] == {"weights": "qint8"}
    assert settings["overrides"]["*.mlp.*"]["weights"] == "qint8"
    assert settings["modules_to_not_convert"] == ["lm_head"]
    again = QuantaConfig.from_dict(json.loads(config.to_json_string()))
    assert again.to_dict() == settings


@pytest.mark.parametrize(
    ("arguments", "names"),
    [
        ({"optimizer": HQQ(iterations=3)}, "optimizer=HQQ"),
        ({"overrides": {"fc": ModuleConfig(weights=qint8, input_smoothing=True)}}, "overrides"),
        ({"overrides": {"fc": {"group_size": torch.tensor(32)}}}, "group_size"),
    ],
)
def test_what_config_json_cannot_hold_is_refused(arguments, names):
    with pytest.raises((TypeError, ValueError), match=names):
        QuantaConfig(weights="int4", **arguments)


def test_save_pretrained_with_a_qtype_object(tiny_llama_dir, tmp_path, token_ids):
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights=qint4))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["weights"] == "qint4"
    assert torch.equal(_logits(_load(tmp_path), token_ids), _logits(model, token_ids))


def test_config_json_stores_the_default_entry_once(tiny_llama_dir, tmp_path, token_ids):
    config = QuantaConfig(weights="int4", overrides={"*.down_proj": {"weights": "int8"}})
    model = _load(tiny_llama_dir, quantization_config=config)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["modules"]
    full = QuantizationConfig.from_json(saved).to_json()
    quantized = {name for name, m in model.named_modules() if isinstance(m, QModuleMixin)}
    assert set(saved["modules"]) == set(full["modules"]) == quantized  # the exact list
    assert saved["default"]["weights"] == "qint4"
    down_proj = saved["modules"]["model.layers.0.mlp.down_proj"]
    assert down_proj == {"weights": "qint8", "group_size": None}  # what differs from int4
    assert saved["modules"]["model.layers.0.mlp.up_proj"] == {}
    assert len(json.dumps(saved)) < len(json.dumps(full)) / 3
    reloaded = _load(tmp_path)
    assert torch.equal(_logits(reloaded, token_ids), _logits(model, token_ids))


def test_the_full_per_module_form_still_loads(tiny_llama_dir, tmp_path, token_ids):
    """config.json written before the compact form: every module's entry in full."""
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int8"))
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    document = json.loads(path.read_text())
    quantization = document["quantization_config"]
    quantization["modules"] = QuantizationConfig.from_json(quantization["modules"]).to_json()
    assert "default" not in quantization["modules"]
    path.write_text(json.dumps(document))
    assert torch.equal(_logits(_load(tmp_path), token_ids), _logits(model, token_ids))
