"""from_pretrained with QuantaConfig takes the path of any quantizer: device maps, the allocator
warmup's lookups by name, memory accounting, and a clear refusal to quantize twice."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import modeling_utils  # noqa: E402

from quanta.qintegrations.transformers import QuantaConfig  # noqa: E402
from quanta.qmodules import QModuleMixin, QTensor, weight_memory  # noqa: E402

AutoModelForCausalLM = transformers.AutoModelForCausalLM
SOURCES = ["quantizing", "saved"]


@pytest.fixture(scope="module")
def int4_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny LLaMA quantized to int4 by from_pretrained, saved with save_pretrained."""
    path = tmp_path_factory.mktemp("int4")
    config = QuantaConfig(weights="int4")
    AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=config
    ).save_pretrained(path)
    return path


def _source(request, tiny_llama_dir, int4_dir, weights="int4"):
    """(folder, from_pretrained kwargs): a float folder quantized on load, or a saved one."""
    if request == "saved":
        return int4_dir, {}
    return tiny_llama_dir, {"quantization_config": QuantaConfig(weights=weights)}


def _logits(model, token_ids):
    with torch.inference_mode():
        return model(token_ids).logits


# torch's own error for a device this build lacks: where a GPU build would start copying weights
NO_DEVICE_ERRORS = {
    "cuda": "Torch not compiled with CUDA enabled",
    "mps": "PyTorch is not linked with support for mps devices",  # after the warmup's lookups
}


@pytest.mark.parametrize("device", NO_DEVICE_ERRORS)
@pytest.mark.parametrize("source", SOURCES)
def test_an_accelerator_device_map_fails_only_for_want_of_the_device(
    tiny_llama_dir, int4_dir, source, device
):
    """Before: an AttributeError from Transformers' allocator warmup (the quantized weight was no
    Parameter by its name); now the path of a float model, to torch's own error for the device."""
    folder, kwargs = _source(source, tiny_llama_dir, int4_dir)
    if device == "cuda" and torch.cuda.is_available():
        model = AutoModelForCausalLM.from_pretrained(folder, device_map="cuda", **kwargs)
        assert model.model.layers[0].mlp.up_proj.weight.device.type == "cuda"
        return
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    with pytest.raises((AssertionError, RuntimeError), match=NO_DEVICE_ERRORS[device]):
        AutoModelForCausalLM.from_pretrained(folder, device_map=device, **kwargs)


@pytest.mark.parametrize("source", SOURCES)
def test_allocator_warmup_finds_every_tensor_by_name(
    tiny_llama_dir, int4_dir, token_ids, monkeypatch, source
):
    """The warmup Transformers runs before loading onto an accelerator, run for real on CPU: it
    looks up every tensor of the model by name and sizes it with the quantizer."""
    warmed = []

    def warmup(model, expanded_device_map, hf_quantizer):
        on_gpu = {name: torch.device("cuda") for name in expanded_device_map}
        warmed.append(modeling_utils.get_total_byte_count(model, on_gpu, hf_quantizer))

    monkeypatch.setattr(modeling_utils, "caching_allocator_warmup", warmup)
    folder, kwargs = _source(source, tiny_llama_dir, int4_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, device_map={"": "cpu"}, **kwargs)
    (byte_count,) = (count[torch.device("cuda")] for count in warmed)
    stored = sum(tensor.nbytes for tensor in model.state_dict().values())
    assert byte_count == pytest.approx(stored)  # the quantized size, not the float one


def test_the_loaded_model_finds_its_checkpoint_names(int4_dir):
    """Every float name of the checkpoint (a quantized weight's is its shape sentinel) is a
    parameter or buffer of the loaded model, as Transformers' lookups expect."""
    from safetensors import safe_open

    model = AutoModelForCausalLM.from_pretrained(int4_dir)
    with safe_open(int4_dir / "model.safetensors", framework="pt") as file:
        names = list(file.keys())
    float_names = [name for name in names if not name.rpartition(".")[0].endswith(".weight")]
    assert len(float_names) < len(names)
    for name in float_names:
        module = model.get_submodule(name.rpartition(".")[0])
        tensor = model.get_parameter_or_buffer(name)
        assert isinstance(tensor, QTensor) == isinstance(module, QModuleMixin), name


@pytest.mark.parametrize("source", SOURCES)
def test_a_per_module_device_map(tiny_llama_dir, int4_dir, token_ids, source):
    folder, kwargs = _source(source, tiny_llama_dir, int4_dir)
    expected = _logits(AutoModelForCausalLM.from_pretrained(folder, **kwargs), token_ids)
    device_map = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu"}
    device_map |= {"model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, **kwargs)
    assert torch.equal(_logits(model, token_ids), expected)


def test_a_quantized_model_moves_to_meta_and_back(int4_dir, token_ids):
    model = AutoModelForCausalLM.from_pretrained(int4_dir)
    layer = model.model.layers[0].mlp
    inputs = torch.randn(2, 64)
    expected = layer(inputs)
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    model.to("meta")
    weight = layer.up_proj.weight
    assert isinstance(weight, QTensor) and weight.is_meta
    assert all(part.is_meta for part in weight.inner_tensors().values())
    model.to_empty(device="cpu")
    model.load_state_dict(state)
    assert isinstance(layer.up_proj.weight, QTensor)
    assert torch.equal(layer(inputs), expected)


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_memory_footprint_counts_the_stored_bytes(tiny_llama_dir, weights):
    """Before: the float size whatever the weights (538 MB for SmolLM2 in fp32, int8 and int4)."""
    float_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    config = QuantaConfig(weights=weights)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=config)
    memory = weight_memory(model)
    assert memory.quantized_bytes < memory.float_bytes / 3
    expected = float_model.get_memory_footprint() - memory.float_bytes + memory.quantized_bytes
    assert model.get_memory_footprint() == pytest.approx(expected)


def test_requantizing_a_quantized_folder_is_refused(int4_dir):
    """Before: Transformers kept int4 and only warned."""
    with pytest.raises(
        ValueError, match=r"already quantized.*weights='int4' saved, 'int8' requested"
    ):
        AutoModelForCausalLM.from_pretrained(
            int4_dir, quantization_config=QuantaConfig(weights="int8")
        )


def test_the_saved_config_passed_again_loads(int4_dir):
    with pytest.warns(UserWarning, match="from the model will be used"):
        model = AutoModelForCausalLM.from_pretrained(
            int4_dir, quantization_config=QuantaConfig(weights="int4")
        )
    assert model.model.layers[0].mlp.up_proj.qconfig.weights.name == "qint4"
