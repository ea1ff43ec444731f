"""from_pretrained with QuantaConfig on a tiny LLaMA: quantize on load, save, reload, compile."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import quanta  # noqa: E402
from quanta.qcalib import Calibration  # noqa: E402
from quanta.qintegrations.transformers import QuantaConfig, QuantaHfQuantizer  # noqa: E402
from quanta.qmodules import QBitsTensor, QBytesTensor, QModuleMixin, freeze, quantize  # noqa: E402

AutoModelForCausalLM = transformers.AutoModelForCausalLM
WEIGHTS = ("int8", "int4", "float8")
NO_KEY_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}


def _load(path, **kwargs):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    assert {key: info[key] for key in NO_KEY_PROBLEMS} == NO_KEY_PROBLEMS
    return model.eval()


@torch.inference_mode()
def _logits(model, token_ids):
    return model(token_ids).logits


def test_registered_under_quant_method_quanta():
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
    )

    assert AUTO_QUANTIZATION_CONFIG_MAPPING["quanta"] is QuantaConfig
    assert AUTO_QUANTIZER_MAPPING["quanta"] is QuantaHfQuantizer


def test_the_meta_package_exports_quanta_config():
    if not hasattr(quanta, "_EXPORTS"):  # `nox -s tests_pkg` installs the layers without it
        pytest.skip("the meta distribution `quanta` is not installed")
    assert quanta.QuantaConfig is QuantaConfig


def test_registration_waits_for_transformers_in_a_fresh_interpreter():
    code = (
        "import sys, quanta.qintegrations; assert 'transformers' not in sys.modules; "
        "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as m; "
        "print(m['quanta'].__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "QuantaHfQuantizer"


@pytest.mark.parametrize(
    ("arguments", "error", "names"),
    [
        ({"weights": "int3"}, ValueError, "weights"),
        ({"activations": "int4"}, ValueError, "activations"),
        ({"activations_mode": "eager"}, ValueError, "activations_mode"),
        ({"group_size": 0}, ValueError, "group_size"),
        ({"modules_to_not_convert": "lm_head"}, TypeError, "modules_to_not_convert"),
        ({"optimizer": "gptq"}, ValueError, "gptq"),
        ({"optimizer": "nope"}, ValueError, "optimizer"),
        ({"overrides": {"*": {"bits": 4}}}, ValueError, "overrides"),
        ({"weigths": "int4"}, TypeError, "weigths"),
        ({"modules": {"config_version": 99}}, ValueError, "config_version"),
    ],
)
def test_bad_arguments_are_refused_at_once(arguments, error, names):
    with pytest.raises(error, match=names):
        QuantaConfig(**arguments)


def test_config_round_trips_through_a_dict():
    config = QuantaConfig(weights="int4", group_size=32, modules_to_not_convert=["lm_head"])
    again = QuantaConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert config.to_dict()["quant_method"] == "quanta"


@pytest.mark.parametrize("weights", WEIGHTS)
def test_quantize_on_load_equals_quantize_and_freeze(tiny_llama_dir, token_ids, weights):
    loaded = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights=weights))
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    freeze(quantize(reference, weights=weights, exclude="lm_head"))
    assert torch.equal(_logits(loaded, token_ids), _logits(reference, token_ids))
    layer = loaded.model.layers[0].self_attn.q_proj
    assert isinstance(layer.weight, QBitsTensor if weights == "int4" else QBytesTensor)
    assert not isinstance(loaded.lm_head, QModuleMixin)  # Transformers' default: output embeddings


def test_modules_to_not_convert_and_overrides(tiny_llama_dir):
    config = QuantaConfig(
        weights="int4",
        modules_to_not_convert=["*.o_proj"],
        overrides={"*.mlp.*": {"weights": "int8"}},
    )
    model = _load(tiny_llama_dir, quantization_config=config)
    layer = model.model.layers[1]
    assert not isinstance(layer.self_attn.o_proj, QModuleMixin)
    assert layer.self_attn.q_proj.qconfig.weights.name == "qint4"
    assert layer.mlp.up_proj.qconfig.weights.name == "qint8"
    assert isinstance(model.lm_head, QModuleMixin)  # patterns given: no default exclusions


def test_patterns_that_match_no_module_are_a_warning(tiny_llama_dir):
    config = QuantaConfig(
        weights="int4",
        modules_to_not_convert=["*.o_proj", "gate_projj"],
        overrides={"*.mlpp.*": {"weights": "int8"}},
    )
    with pytest.warns(UserWarning, match=r"\['gate_projj', '\*.mlpp.\*'\] match no"):
        model = _load(tiny_llama_dir, quantization_config=config)
    layer = model.model.layers[0]
    assert not isinstance(layer.self_attn.o_proj, QModuleMixin)  # the matching pattern served
    assert layer.mlp.gate_proj.qconfig.weights.name == "qint4"


def _save_reload_resave(model, token_ids, tmp_path, **load_kwargs):
    """save_pretrained, reload without a config, save the reload: every step, the same logits."""
    expected = _logits(model, token_ids)
    model.save_pretrained(tmp_path / "saved")
    reloaded = _load(tmp_path / "saved", **load_kwargs)
    assert torch.equal(_logits(reloaded, token_ids), expected)
    reloaded.save_pretrained(tmp_path / "resaved")
    assert torch.equal(_logits(_load(tmp_path / "resaved", **load_kwargs), token_ids), expected)
    return reloaded


@pytest.mark.parametrize("weights", WEIGHTS)
def test_save_reload_resave_gives_identical_logits(tiny_llama_dir, token_ids, tmp_path, weights):
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights=weights))
    reloaded = _save_reload_resave(model, token_ids, tmp_path)
    assert type(reloaded.model.layers[0].mlp.down_proj.weight) is type(
        model.model.layers[0].mlp.down_proj.weight
    )
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "quanta" and saved["weights"] == weights
    assert "model.layers.0.mlp.down_proj" in saved["modules"]["modules"]


@pytest.mark.parametrize("weights", ["nf4", "nf4_dq", "mxfp4", "nvfp4", "mxfp8"])
def test_block_formats_quantize_on_load_save_and_reload(
    tiny_llama_dir, token_ids, tmp_path, weights
):
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights=weights))
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    freeze(quantize(reference, weights=weights, exclude="lm_head"))
    assert torch.equal(_logits(model, token_ids), _logits(reference, token_ids))
    _save_reload_resave(model, token_ids, tmp_path)


def test_checkpoint_holds_the_frozen_layout_and_shape_sentinels(tiny_llama_dir, tmp_path):
    from safetensors import safe_open

    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int4"))
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as file:
        stored = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    state = model.state_dict()
    assert set(stored) - set(state) == {
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, QModuleMixin)
    }
    for key, tensor in state.items():
        assert torch.equal(stored[key], tensor), key
    sentinel = stored["model.layers.0.mlp.down_proj.weight"]
    assert sentinel.dtype == torch.int64 and sentinel.tolist() == [64, 128]


def test_bfloat16_and_int2_with_hqq(tiny_llama_dir, token_ids, tmp_path):
    config = QuantaConfig(weights="int2", optimizer="hqq", group_size=32)
    model = _load(tiny_llama_dir, quantization_config=config, dtype=torch.bfloat16)
    assert model.model.layers[0].self_attn.q_proj.weight.scale.dtype == torch.bfloat16
    _save_reload_resave(model, token_ids, tmp_path, dtype=torch.bfloat16)


def test_generate_after_reload(tiny_llama_dir, token_ids, tmp_path):
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int4"))
    expected = model.generate(token_ids[:1], max_new_tokens=6, do_sample=False)
    model.save_pretrained(tmp_path)
    generated = _load(tmp_path).generate(token_ids[:1], max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, token_ids.shape[1] + 6)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_of_a_reloaded_model(tiny_llama_dir, token_ids, tmp_path, backend):
    _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int4")).save_pretrained(
        tmp_path
    )
    model = _load(tmp_path)
    compiled = torch.compile(model, backend=backend)
    # inductor fuses the dequantization differently: float32 rounding, measured 2.7e-7
    torch.testing.assert_close(
        _logits(compiled, token_ids), _logits(model, token_ids), rtol=0, atol=1e-5
    )


def test_dynamic_activations_save_and_reload(tiny_llama_dir, token_ids, tmp_path):
    config = QuantaConfig(weights="int8", activations="int8", activations_mode="dynamic")
    model = _load(tiny_llama_dir, quantization_config=config)
    reloaded = _save_reload_resave(model, token_ids, tmp_path)
    assert reloaded.model.layers[0].mlp.up_proj.qconfig.activations_mode == "dynamic"


def test_static_activations_calibrated_after_load_save_and_reload(
    tiny_llama_dir, token_ids, tmp_path
):
    model = _load(
        tiny_llama_dir, quantization_config=QuantaConfig(weights="int8", activations="int8")
    )
    layer = model.model.layers[0].mlp.down_proj
    assert layer.input_scale.item() == 1.0  # uncalibrated
    with torch.inference_mode(), Calibration(momentum=0.9):
        model(token_ids)
    scale = layer.input_scale.item()
    assert scale != 1.0
    reloaded = _save_reload_resave(model, token_ids, tmp_path)
    assert reloaded.model.layers[0].mlp.down_proj.input_scale.item() == scale


@pytest.mark.parametrize("device_map", [{"": "cpu"}, "auto"], ids=["cpu", "auto"])
def test_device_map_on_load_and_reload(tiny_llama_dir, token_ids, tmp_path, device_map):
    expected = _logits(
        _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int4")), token_ids
    )
    config = QuantaConfig(weights="int4")
    model = _load(tiny_llama_dir, quantization_config=config, device_map=device_map)
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "cpu"
    assert torch.equal(_logits(model, token_ids), expected)
    model.save_pretrained(tmp_path)
    reloaded = _load(tmp_path, device_map=device_map, dtype=torch.float32)
    assert torch.equal(_logits(reloaded, token_ids), expected)


def test_a_checkpoint_without_the_plugin_fails_loudly(tiny_llama_dir, tmp_path):
    """Transformers only warns about the unknown quant_method 'quanta'; the shape sentinels
    stored under the float weight names make it refuse the checkpoint instead."""
    _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int8")).save_pretrained(
        tmp_path
    )
    code = (
        "import sys, transformers\n"
        f"try: transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "except RuntimeError as error: print('refused:', error)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'quanta'], 'quanta imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("refused: You set `ignore_mismatched_sizes` to `False`")
    assert "Unknown quantization type, got quanta" in out.stderr
    assert "self_attn.q_proj.weight" in out.stderr and "MISMATCH" in out.stderr


def test_a_config_from_elsewhere_without_modules_is_refused(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.config.quantization_config = {"quant_method": "quanta", "weights": "int8"}
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no per-module config"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_quantized_model_copies_keep_working(tiny_llama_dir, token_ids):
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int4"))
    assert torch.equal(_logits(copy.deepcopy(model), token_ids), _logits(model, token_ids))


@pytest.mark.parametrize("pre_quantized", [False, True], ids=["quantizing", "saved"])
def test_disk_offload_is_refused_with_what_to_do(tiny_llama_dir, tmp_path, pre_quantized):
    """Measured without the refusal: Transformers' disk index points at the checkpoint's tensor
    under the weight's name, the float weight (quantized again at every call) or the shape
    sentinel of a saved one (a shape error); the quantized weight is dropped. test_offload.py
    runs the way out the message gives."""
    config = QuantaConfig(weights="int4")
    source, kwargs = tiny_llama_dir, {"quantization_config": config}
    if pre_quantized:
        _load(tiny_llama_dir, quantization_config=config).save_pretrained(tmp_path / "saved")
        source, kwargs = tmp_path / "saved", {}
    device_map = {"model": "cpu", "lm_head": "disk"}
    with pytest.raises(
        ValueError,
        match=r"offloads modules to \['disk'\].*device_map=\{'': 'cpu'\}.*serve_quantized_weights",
    ):
        AutoModelForCausalLM.from_pretrained(
            source, device_map=device_map, offload_folder=tmp_path / "offload", **kwargs
        )


@pytest.mark.parametrize(
    ("device_map", "refused"),
    [
        ({"model": 0, "lm_head": "cpu"}, False),  # CPU offload beside a GPU: served quantized
        ({"model": "cuda:0", "lm_head": "disk"}, True),
        ({"model": "cpu", "lm_head": "disk"}, True),
        ({"model": 0, "lm_head": 1}, False),  # several GPUs: no offload hooks
        ({"model": "cpu", "lm_head": "cpu"}, False),
        ({"": 0}, False),
    ],
)
def test_device_maps_that_offload_to_disk_are_refused(device_map, refused):
    """The check also runs on the device_map that 'auto' resolves to (a GPU machine: no test)."""
    quantizer = QuantaHfQuantizer(QuantaConfig(weights="int4"), pre_quantized=False)
    if refused:
        with pytest.raises(ValueError, match=r"offloads modules to \['disk'\]"):
            quantizer.validate_environment(device_map=device_map)
    else:
        quantizer.validate_environment(device_map=device_map)


def test_sharded_checkpoint(tiny_llama_dir, token_ids, tmp_path):
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int4"))
    model.save_pretrained(tmp_path, max_shard_size="40KB")  # a module's parts may span shards
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    assert torch.equal(_logits(_load(tmp_path), token_ids), _logits(model, token_ids))


def test_layer_norm_outputs_of_an_opt_model(tiny_opt_dir, token_ids, tmp_path):
    """OPT has nn.LayerNorm: with activations it becomes a QLayerNorm quantizing its output,
    whose scale no weight operation fills."""
    config = QuantaConfig(weights="int8", activations="int8")
    model = _load(tiny_opt_dir, quantization_config=config)
    norm = model.model.decoder.layers[0].self_attn_layer_norm
    assert isinstance(norm, QModuleMixin) and norm.output_scale.item() == 1.0
    with torch.inference_mode(), Calibration(momentum=0.9):
        model(token_ids)
    assert norm.output_scale.item() != 1.0
    _save_reload_resave(model, token_ids, tmp_path)
