"""Diffusers models quantized by quanta while they load: tiny UNet2DConditionModel,
SD3Transformer2DModel and FluxTransformer2DModel built from configs (random weights), then
save_pretrained / from_pretrained, from_single_file and pipeline-level quantization."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub
diffusers = pytest.importorskip("diffusers")
accelerate = pytest.importorskip("accelerate")

from diffusers.quantizers import PipelineQuantizationConfig  # noqa: E402

import quanta  # noqa: E402
import quanta.qintegrations  # noqa: E402  (installs the registration hook)
import quanta.qio  # noqa: E402
from quanta.qcalib import Calibration  # noqa: E402
from quanta.qintegrations.diffusers import (  # noqa: E402
    QuantaConfig,
    attach_quantizer,
    quantize_model,
)
from quanta.qmodules import (  # noqa: E402
    QBitsTensor,
    QBytesTensor,
    QModuleMixin,
    freeze,
    quantize,
)

# int8 weights move these tiny random models' outputs by 0.4% to 0.9% (relative L2, measured).
INT8_RELATIVE_ERROR = 0.05
SAFETENSORS = "diffusion_pytorch_model.safetensors"
NO_KEY_PROBLEMS = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}


def _unet():
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def _unet_inputs():
    return {
        "sample": torch.randn(1, 4, 8, 8),
        "timestep": 3,
        "encoder_hidden_states": torch.randn(1, 5, 16),
    }


def _sd3():
    return diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=16,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=8,
    )


def _sd3_inputs():
    return {
        "hidden_states": torch.randn(1, 4, 8, 8),
        "encoder_hidden_states": torch.randn(1, 5, 16),
        "pooled_projections": torch.randn(1, 8),
        "timestep": torch.tensor([3]),
    }


def _flux():
    return diffusers.FluxTransformer2DModel(
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        axes_dims_rope=(4, 2, 2),
    )


def _flux_inputs():
    return {
        "hidden_states": torch.randn(1, 16, 4),
        "encoder_hidden_states": torch.randn(1, 5, 16),
        "pooled_projections": torch.randn(1, 8),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(5, 3),
    }


def _pixart():
    return diffusers.PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        norm_num_groups=4,
        cross_attention_dim=16,
        sample_size=8,
        caption_channels=16,
    )


def _pixart_inputs():
    return {
        "hidden_states": torch.randn(1, 4, 8, 8),
        "encoder_hidden_states": torch.randn(1, 5, 16),
        "timestep": torch.tensor([3]),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


MODELS = {
    "unet": (_unet, _unet_inputs),
    "sd3": (_sd3, _sd3_inputs),
    "flux": (_flux, _flux_inputs),
    "pixart": (_pixart, _pixart_inputs),
}


@pytest.fixture(scope="module")
def float_dirs(tmp_path_factory):
    """Each tiny float model saved with save_pretrained, with fixed inputs."""
    saved = {}
    for name, (build, inputs) in MODELS.items():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name)
        build().save_pretrained(path)
        saved[name] = (path, inputs())
    return saved


def _load(cls, path, **kwargs):
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    assert {key: info[key] for key in NO_KEY_PROBLEMS} == NO_KEY_PROBLEMS
    return model


@torch.inference_mode()
def _output(model, inputs):
    return model(**inputs).sample


def _quantized_modules(model):
    return {
        name: module for name, module in model.named_modules() if isinstance(module, QModuleMixin)
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_quantize_on_load_then_save_and_reload(name, float_dirs, tmp_path):
    float_dir, inputs = float_dirs[name]
    cls = type(MODELS[name][0]())
    model = _load(cls, float_dir, quantization_config=QuantaConfig(weights="int8"))
    quantized = _quantized_modules(model)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(quantized) == len(layers) and all(m.is_frozen for m in quantized.values())
    if name not in ("flux", "pixart"):  # PixArt's patch embedding is its only convolution
        assert any(isinstance(m, torch.nn.Conv2d) for m in quantized.values())
    reference = _output(_load(cls, float_dir), inputs)
    output = _output(model, inputs)
    assert (output - reference).norm() / reference.norm() < INT8_RELATIVE_ERROR

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "quanta" and set(saved["modules"]["modules"]) == set(quantized)
    reloaded = _load(cls, tmp_path)  # no quantization_config: the saved one rebuilds the modules
    assert set(_quantized_modules(reloaded)) == set(quantized)
    assert torch.equal(_output(reloaded, inputs), output)


def test_frozen_layout_in_the_file_and_sharded_reload(float_dirs, tmp_path):
    float_dir, inputs = float_dirs["unet"]
    cls = diffusers.UNet2DConditionModel
    config = QuantaConfig(weights="int4", modules_to_not_convert=["conv_out"])
    model = _load(cls, float_dir, quantization_config=config)
    assert not isinstance(model.conv_out, QModuleMixin)
    assert isinstance(model.conv_in.weight, QBitsTensor)
    model.save_pretrained(tmp_path, max_shard_size="20KB")  # modules split across shards
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert {"conv_in.weight.codes", "conv_in.weight.scale", "conv_in.weight.zero_point"} <= set(
        index["weight_map"]
    )
    assert "conv_in.weight" not in index["weight_map"]
    shards_of = {}
    for key, file in index["weight_map"].items():
        shards_of.setdefault(key.rpartition(".weight.")[0], set()).add(file)
    assert any(len(files) > 1 for files in shards_of.values())  # a module spans two shards
    reloaded = _load(cls, tmp_path)
    assert torch.equal(_output(reloaded, inputs), _output(model, inputs))


@pytest.mark.filterwarnings("ignore:.*never calibrated:UserWarning")  # 1.0 scales serve
def test_float8_weights_static_int8_activations_and_bfloat16(float_dirs, tmp_path):
    float_dir, inputs = float_dirs["flux"]
    cls = diffusers.FluxTransformer2DModel
    config = QuantaConfig(weights="float8", activations="int8")
    model = _load(cls, float_dir, quantization_config=config, torch_dtype=torch.bfloat16)
    layer = model.proj_out
    assert isinstance(layer.weight, QBytesTensor) and layer.weight.scale.dtype == torch.bfloat16
    layer.input_scale.fill_(0.05)  # as a calibration would; must survive the round trip
    model.save_pretrained(tmp_path)
    reloaded = _load(cls, tmp_path, torch_dtype=torch.bfloat16)
    assert reloaded.proj_out.input_scale.item() == pytest.approx(0.05, rel=1e-2)
    assert reloaded.proj_out.weight.codes.dtype == model.proj_out.weight.codes.dtype
    inputs = {k: v.bfloat16() if v.is_floating_point() else v for k, v in inputs.items()}
    assert torch.equal(_output(reloaded, inputs), _output(model, inputs))


def _from_single_file(cls, path, float_dir):
    """The documented single-file load: the config stored in the file, a config folder."""
    config = QuantaConfig.from_single_file(path)
    return cls.from_single_file(path, config=str(float_dir), quantization_config=config)


@pytest.mark.parametrize("name", ["unet", "sd3", "flux"])  # PixArt has no from_single_file
def test_from_single_file_of_a_quantized_file(name, float_dirs, tmp_path):
    """int8 activations make the LayerNorms QLayerNorms, whose scales have no float name."""
    float_dir, inputs = float_dirs[name]
    cls = type(MODELS[name][0]())
    config = QuantaConfig(weights="int4", activations="int8")
    model = _load(cls, float_dir, quantization_config=config)
    assert any(m.qconfig.weights is None for m in _quantized_modules(model).values())
    for module in _quantized_modules(model).values():
        for scale in ("input_scale", "output_scale"):
            if getattr(module, scale, None) is not None:
                getattr(module, scale).fill_(0.05)  # as a calibration would
    model.save_pretrained(tmp_path)
    single = _from_single_file(cls, tmp_path / SAFETENSORS, float_dir)
    assert single.state_dict().keys() == model.state_dict().keys()
    for key, tensor in single.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key]), key
    assert torch.equal(_output(single, inputs), _output(model, inputs))


@pytest.mark.filterwarnings("ignore:.*never calibrated:UserWarning")  # 1.0 scales serve
def test_from_single_file_of_a_file_written_by_quanta_save(float_dirs, tmp_path):
    float_dir, inputs = float_dirs["flux"]
    cls = diffusers.FluxTransformer2DModel
    model = freeze(quantize(cls.from_pretrained(float_dir), weights="int8", activations="int8"))
    path = quanta.qio.save(model, tmp_path) / "model.safetensors"
    single = _from_single_file(cls, path, float_dir)
    assert set(_quantized_modules(single)) == set(_quantized_modules(model))
    assert torch.equal(_output(single, inputs), _output(model, inputs))


def test_from_single_file_without_the_stored_config_is_refused(float_dirs, tmp_path):
    """Diffusers' single-file loader hands a quantizer the tensors, never the file's metadata."""
    float_dir, _ = float_dirs["unet"]
    cls = diffusers.UNet2DConditionModel
    _load(cls, float_dir, quantization_config=QuantaConfig(weights="int4")).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"QuantaConfig.from_single_file\(path\)"):
        cls.from_single_file(
            tmp_path / SAFETENSORS, config=str(float_dir), quantization_config=QuantaConfig()
        )


def test_from_single_file_of_a_float_file_quantizes_it(float_dirs):
    float_dir, inputs = float_dirs["sd3"]
    cls = diffusers.SD3Transformer2DModel
    config = QuantaConfig(weights="int8")
    single = cls.from_single_file(
        float_dir / SAFETENSORS, config=str(float_dir), quantization_config=config
    )
    assert config.modules is None  # the caller's config is not changed: it can serve again
    loaded = _load(cls, float_dir, quantization_config=config)
    assert set(_quantized_modules(single)) == set(_quantized_modules(loaded))
    assert torch.equal(_output(single, inputs), _output(loaded, inputs))


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A tiny DDPMPipeline (UNet2DModel and scheduler, no text encoder) saved as a folder."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )
    pipeline = diffusers.DDPMPipeline(
        unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=10)
    )
    path = tmp_path_factory.mktemp("ddpm")
    pipeline.save_pretrained(path)
    return path


def _images(pipeline):
    generator = torch.Generator().manual_seed(0)
    return pipeline(num_inference_steps=2, generator=generator, output_type="np").images


@pytest.mark.parametrize(
    "pipeline_config",
    [
        {
            "quant_backend": "quanta",
            "quant_kwargs": {"weights": "int8"},
            "components_to_quantize": ["unet"],
        },
        {"quant_mapping": {"unet": QuantaConfig(weights="int4")}},
    ],
    ids=["quant_backend", "quant_mapping"],
)
def test_pipeline_level_quantization_save_and_reload(pipeline_config, pipeline_dir, tmp_path):
    config = PipelineQuantizationConfig(**pipeline_config)
    pipeline = diffusers.DiffusionPipeline.from_pretrained(pipeline_dir, quantization_config=config)
    assert isinstance(pipeline.unet.conv_in, QModuleMixin) and pipeline.unet.conv_in.is_frozen
    images = _images(pipeline)
    pipeline.save_pretrained(tmp_path)
    reloaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded.unet.conv_in, QModuleMixin)
    assert (_images(reloaded) == images).all()


def test_quantize_a_model_in_memory_then_save_and_reload(float_dirs, tmp_path):
    float_dir, inputs = float_dirs["unet"]
    cls = diffusers.UNet2DConditionModel
    model = quantize_model(cls.from_pretrained(float_dir), QuantaConfig(weights="int4"))
    assert all(m.is_frozen for m in _quantized_modules(model).values())
    model.save_pretrained(tmp_path)
    reloaded = _load(cls, tmp_path)
    assert set(_quantized_modules(reloaded)) == set(_quantized_modules(model))
    assert torch.equal(_output(reloaded, inputs), _output(model, inputs))


def test_from_pretrained_with_the_transformers_config(float_dirs, tmp_path):
    """`quanta.QuantaConfig` (the Transformers one) serves Diffusers too, converted."""
    from quanta.qintegrations.transformers import QuantaConfig as TransformersQuantaConfig

    float_dir, inputs = float_dirs["flux"]
    cls = diffusers.FluxTransformer2DModel
    model = _load(cls, float_dir, quantization_config=TransformersQuantaConfig(weights="int8"))
    assert _quantized_modules(model)
    model.save_pretrained(tmp_path)
    assert torch.equal(_output(_load(cls, tmp_path), inputs), _output(model, inputs))


def test_attach_quantizer_after_calibration(float_dirs, tmp_path):
    float_dir, inputs = float_dirs["flux"]
    cls = diffusers.FluxTransformer2DModel
    model = quantize(cls.from_pretrained(float_dir), weights="int8", activations="int8")
    with Calibration(momentum=0.9):
        _output(model, inputs)
    attach_quantizer(freeze(model))
    model.save_pretrained(tmp_path)
    reloaded = _load(cls, tmp_path)
    assert reloaded.proj_out.input_scale.item() == model.proj_out.input_scale.item() != 1.0
    assert torch.equal(_output(reloaded, inputs), _output(model, inputs))


def test_in_memory_helpers_refuse_bad_arguments(float_dirs):
    float_dir, _ = float_dirs["flux"]
    model = diffusers.FluxTransformer2DModel.from_pretrained(float_dir)
    with pytest.raises(TypeError, match="ModelMixin"):
        quantize_model(torch.nn.Linear(2, 2), QuantaConfig())
    with pytest.raises(TypeError, match="QuantaConfig"):
        quantize_model(model, {"weights": "int8"})
    with pytest.raises(ValueError, match="frozen"):
        attach_quantizer(quantize(model, weights="int8"))


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    """A tiny WanTransformer3DModel: its class keeps time_embedder and norm1-3 in float32."""
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
        rope_max_seq_len=32,
    )
    path = tmp_path_factory.mktemp("wan")
    model.save_pretrained(path)
    return path


def _wan_float_modules(model):
    """The Linear and LayerNorm modules under Wan's `_keep_in_fp32_modules`."""
    kept = diffusers.WanTransformer3DModel._keep_in_fp32_modules
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm))
        and set(name.split(".")) & set(kept)
    }


def test_keep_in_fp32_modules_stay_float(wan_dir, tmp_path):
    cls = diffusers.WanTransformer3DModel
    config = QuantaConfig(weights="int8", activations="int8")
    model = _load(cls, wan_dir, quantization_config=config, torch_dtype=torch.bfloat16)
    kept = _wan_float_modules(model)
    assert {"condition_embedder.time_embedder.linear_1", "blocks.0.norm2"} <= set(kept)
    assert not any(isinstance(module, QModuleMixin) for module in kept.values())
    assert all(p.dtype == torch.float32 for m in kept.values() for p in m.parameters())
    assert isinstance(model.blocks[0].attn1.to_q, QModuleMixin)
    model.save_pretrained(tmp_path)
    reloaded = _load(cls, tmp_path, torch_dtype=torch.bfloat16)
    assert set(_quantized_modules(reloaded)) == set(_quantized_modules(model))
    in_memory = quantize_model(cls.from_pretrained(wan_dir), QuantaConfig(weights="int8"))
    assert not any(isinstance(m, QModuleMixin) for m in _wan_float_modules(in_memory).values())


def test_device_map_cpu(float_dirs, tmp_path):
    float_dir, inputs = float_dirs["sd3"]
    cls = diffusers.SD3Transformer2DModel
    expected = _output(
        _load(cls, float_dir, quantization_config=QuantaConfig(weights="int4")), inputs
    )
    config = QuantaConfig(weights="int4")
    model = _load(cls, float_dir, quantization_config=config, device_map="cpu")
    assert torch.equal(_output(model, inputs), expected)
    model.save_pretrained(tmp_path)
    assert torch.equal(_output(_load(cls, tmp_path, device_map={"": "cpu"}), inputs), expected)


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_device_map_cpu_offload_after_loading(float_dirs, weights):
    """Diffusers offloads to the CPU only beside a GPU: its dispatch builds the hooks
    cpu_offload builds, then postprocesses. (Diffusers cannot save an offloaded model, even a
    float one: its state_dict holds meta tensors.)"""
    float_dir, inputs = float_dirs["sd3"]
    cls = diffusers.SD3Transformer2DModel
    config = QuantaConfig(weights=weights)
    with torch.inference_mode():
        expected = _load(cls, float_dir, quantization_config=config)(**inputs).sample
        model = _load(cls, float_dir, quantization_config=config, device_map="cpu")
        accelerate.cpu_offload(model, execution_device="cpu")
        model.hf_quantizer.postprocess_model(model)
        assert model.pos_embed.proj.weight.is_meta  # the QConv2d too
        assert torch.equal(model(**inputs).sample, expected)


def test_disk_offloading_device_maps_are_refused(float_dirs, tmp_path):
    """Measured without the refusal: accelerate's disk hooks set the held-back placeholder
    (shape [0]) as the weight."""
    float_dir, _ = float_dirs["flux"]
    cls = diffusers.FluxTransformer2DModel
    _load(cls, float_dir, quantization_config=QuantaConfig(weights="int8")).save_pretrained(
        tmp_path
    )
    with pytest.raises(
        ValueError, match=r"offloads modules to \['disk'\].*device_map=\{'': 'cpu'\}"
    ):
        cls.from_pretrained(
            tmp_path, device_map={"transformer_blocks": "disk", "": "cpu"}, offload_folder=tmp_path
        )
