"""compressed-tensors exports load with the real loader (issue 19 acceptance): Transformers with
compressed-tensors (never a quanta dependency: installed in this test session only) reads every
scheme, the dequantized weights equal quanta's bit for bit and the logits equal quanta's own
forward within the activations' rounding; a checkpoint compressed-tensors itself writes (as
llmcompressor does) imports into quanta's modules."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

compressed_tensors = pytest.importorskip("compressed_tensors")
transformers = pytest.importorskip("transformers")

from quanta.qintegrations.export import export, load_compressed_tensors  # noqa: E402
from quanta.qmodules import QModuleMixin, freeze, quantize  # noqa: E402
from quanta.qtypes import qint8  # noqa: E402

# Dynamic int8 activations: compressed-tensors' per-token scale is max|x| / 127.5, quanta's
# max|x| / 127, so a dequantized input differs by at most one step, max|row| / 127: the logits
# of the tiny LLaMA by up to 1% of the largest (measured), a Linear's output j by at most
# step * sum_k |W[j, k]| (checked with this slack for the fp32 sums).
DYNAMIC_INT8_TOLERANCE = 3 / 127
ONE_STEP_SLACK = 1.001
# Otherwise the same values are computed in another order: fp32 rounding, relative to the largest
# output (measured 3e-6 for SmolLM2's weight-only logits after 30 layers).
FLOAT32_TOLERANCE = 1e-5
# Transformers 5.24 decompresses every dense module with the first config group when it
# dequantizes at load time, which the asymmetric int4 of compressed-tensors 0.20.1 needs (its
# compressed path checks the packed zero point's shape against the unpacked one).
MIXED_ASYMMETRIC = (
    "Transformers 5.24 + compressed-tensors 0.20.1 load asymmetric int4 only with "
    "dequantize=True, which applies the first config group to every module"
)


def load_with_transformers(folder) -> torch.nn.Module:
    """The exported folder as Transformers + compressed-tensors load it (dequantize=True where
    the weights are asymmetric: see MIXED_ASYMMETRIC)."""
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    groups = config["config_groups"].values()
    if not any(not group["weights"]["symmetric"] for group in groups):
        return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    dequantize = transformers.CompressedTensorsConfig(dequantize=True)
    with warnings.catch_warnings():  # that the saved config is kept, as it should be
        warnings.filterwarnings("ignore", "You passed `quantization_config`", UserWarning)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=dequantize
        )
    return model.eval()


def check_loads_as_quanta_computes(model, folder, token_ids, whole_model=True) -> None:
    """Transformers' model of `folder` has quanta's dequantized weights bit for bit and computes
    quanta's logits (`whole_model`), or each quantized Linear's output from the input quanta's
    saw: a deep model with quantized activations flips a few codes on one-ulp differences and
    the flips grow from layer to layer (SmolLM2: 11-24% of the largest logit after 30 layers)."""
    loaded = load_with_transformers(folder)
    linears = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin) and isinstance(module, torch.nn.Linear)
    }
    inputs = {}
    hooks = [
        module.register_forward_pre_hook(lambda _, args, name=name: inputs.update({name: args[0]}))
        for name, module in linears.items()
    ]
    with torch.no_grad():  # first: compressed-tensors decompresses on the first forward
        expected, logits = model(token_ids).logits, loaded(token_ids).logits
    for hook in hooks:
        hook.remove()
    for name, module in linears.items():
        theirs = loaded.get_submodule(name).weight
        assert torch.equal(theirs.to(module.weight.dtype), module.weight.dequantize()), name
    dynamic_int8 = any(
        m.qconfig.activations == qint8 and m.qconfig.activations_mode == "dynamic"
        for m in linears.values()
    )
    if whole_model:
        tolerance = DYNAMIC_INT8_TOLERANCE if dynamic_int8 else FLOAT32_TOLERANCE
        assert (logits - expected).abs().max() <= tolerance * expected.abs().max()
        return
    for name, module in linears.items():
        with torch.no_grad():
            ours, theirs = module(inputs[name]), loaded.get_submodule(name)(inputs[name])
        if dynamic_int8:
            step = inputs[name].abs().amax(dim=-1, keepdim=True) / 127
            bound = step * module.weight.dequantize().abs().sum(dim=1)
            assert bool(((theirs - ours).abs() <= ONE_STEP_SLACK * bound).all()), name
        else:
            assert (theirs - ours).abs().max() <= FLOAT32_TOLERANCE * ours.abs().max(), name


def test_every_scheme_loads_with_transformers(
    quantized_tiny_llama, export_scheme, token_ids, tmp_path, request
):
    if export_scheme == dict(weights="int4", group_size=64):  # channel and group: two groups
        request.applymarker(pytest.mark.xfail(strict=True, reason=MIXED_ASYMMETRIC))
    model = quantized_tiny_llama(**export_scheme)
    folder = export(model, tmp_path / "ct", "compressed-tensors")
    check_loads_as_quanta_computes(model, folder, token_ids)


def _compressed_tensors_checkpoint(folder, preset: str, float_dir, group_size=None) -> None:
    """A checkpoint written by compressed-tensors itself (what llmcompressor calls to save):
    the preset scheme applied to the tiny LLaMA's Linears but lm_head, min-max scales."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    model = transformers.LlamaForCausalLM.from_pretrained(float_dir).eval()
    scheme = preset_name_to_scheme(preset, ["Linear"])
    if group_size is not None:
        scheme.weights.group_size = group_size
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"])
    apply_quantization_config(model, config)
    for module in model.modules():
        if not hasattr(module, "weight_scale"):
            continue
        weight = module.weight.detach()
        if scheme.weights.strategy == "group":
            weight = weight.reshape(weight.shape[0], -1, scheme.weights.group_size)
        low, high = weight.amin(dim=-1), weight.amax(dim=-1)
        scale, zero_point = calculate_qparams(low, high, scheme.weights)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(zero_point.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(folder)


@pytest.mark.parametrize(
    ("preset", "group_size"),
    [("W4A16_ASYM", 32), ("W4A16", 32), ("W8A8", None), ("FP8_DYNAMIC", None)],
)
def test_a_compressed_tensors_checkpoint_imports_into_quanta(
    preset, group_size, tiny_llama_dir, token_ids, tmp_path
):
    folder = tmp_path / preset
    _compressed_tensors_checkpoint(folder, preset, tiny_llama_dir, group_size)
    model = load_compressed_tensors(folder)
    assert isinstance(model.get_submodule("model.layers.0.mlp.down_proj"), QModuleMixin)
    check_loads_as_quanta_computes(model, folder, token_ids)


# SmolLM2-135M (slow: the float model loads and each scheme quantizes and loads twice)
SMOLLM2_SCHEMES = {
    "int4-group64": dict(weights="int4", group_size=64),  # one group size: K is 576 or 1536
    "int8": dict(weights="int8"),
    "fp8": dict(weights="fp8"),
    "w8a8-int8-dynamic": dict(weights="int8", activations="int8", activations_mode="dynamic"),
    "w8a8-fp8-dynamic": dict(weights="fp8", activations="fp8", activations_mode="dynamic"),
}


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from demo import models

    return models.load_smollm2()


@pytest.mark.slow
@pytest.mark.parametrize("settings", list(SMOLLM2_SCHEMES.values()), ids=list(SMOLLM2_SCHEMES))
def test_smollm2_loads_with_transformers(smollm2, settings, tmp_path):
    float_model, tokenizer = smollm2
    model = copy.deepcopy(float_model)
    freeze(quantize(model, include="*proj", **settings), progress=False)
    folder = export(model, tmp_path / "ct", "compressed-tensors", tokenizer=tokenizer)
    assert (folder / "tokenizer.json").is_file()
    token_ids = tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    whole_model = settings.get("activations") is None
    check_loads_as_quanta_computes(model, folder, token_ids, whole_model)
