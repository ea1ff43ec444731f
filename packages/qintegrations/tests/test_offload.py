"""Offloading a quanta-quantized model with accelerate's hooks: same outputs, weights still
quantized, and save_pretrained afterwards."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from quanta.qintegrations.offload import serve_quantized_weights  # noqa: E402
from quanta.qintegrations.transformers import QuantaConfig  # noqa: E402
from quanta.qmodules import QTensor  # noqa: E402

AutoModelForCausalLM = transformers.AutoModelForCausalLM
# Every stored layout: QBitsTensor (int4) and QBytesTensor (int8 codes, float8 codes).
WEIGHTS = ["int4", "int8", "float8"]
# Both layers on disk, the rest beside them on the CPU, which computes (nothing CPU-offloaded).
DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "disk",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


class QuantizedLinearCount(TorchDispatchMode):
    """Counts the quanta linear kernels run: one per weight that reached its layer quantized."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.name().startswith("quanta::linear")
        return func(*args, **(kwargs or {}))


def _load(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


@torch.no_grad()  # what generate() and pipelines use; inference_mode is tested apart
def _logits(model, token_ids):
    return model(token_ids).logits


@pytest.fixture(params=WEIGHTS)
def quantized_model(request, tiny_llama_dir):
    return _load(tiny_llama_dir, quantization_config=QuantaConfig(weights=request.param))


@pytest.mark.parametrize("offload_buffers", [False, True], ids=["params", "buffers"])
def test_cpu_offload_serves_the_stored_quantized_weights(
    quantized_model, token_ids, offload_buffers
):
    expected = _logits(quantized_model, token_ids)
    layer = quantized_model.model.layers[1].mlp.up_proj
    weight_type, codes = type(layer.weight), layer.weight.codes.data_ptr()
    accelerate.cpu_offload(quantized_model, execution_device="cpu", offload_buffers=offload_buffers)
    serve_quantized_weights(serve_quantized_weights(quantized_model))  # again: changes nothing
    assert layer.weight.is_meta
    served = layer._hf_hook.weights_map["weight"]
    assert type(served) is weight_type and served.codes.data_ptr() == codes  # no copy
    assert torch.equal(_logits(quantized_model, token_ids), expected)
    assert torch.equal(_logits(quantized_model, token_ids), expected)


def test_inference_mode_runs_the_offloaded_weights_quantized(quantized_model, token_ids):
    """There too accelerate's hooks move each weight with .to() and rebuild it as a parameter."""
    expected = _logits(quantized_model, token_ids)
    linears = [m for m in quantized_model.modules() if isinstance(m, torch.nn.Linear)]
    quantized = sum(isinstance(m.weight, QTensor) for m in linears)  # embeddings: no kernel
    accelerate.cpu_offload(quantized_model, execution_device="cpu")
    serve_quantized_weights(quantized_model)
    with torch.inference_mode(), QuantizedLinearCount() as kernels:
        assert torch.equal(quantized_model(token_ids).logits, expected)
    assert kernels.count == quantized
    assert torch.equal(_logits(quantized_model, token_ids), expected)  # and no_grad after it


@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")
def test_disk_offload_writes_the_quantized_parts_then_saves(quantized_model, token_ids, tmp_path):
    expected = _logits(quantized_model, token_ids)
    offload_dir = tmp_path / "offload"
    accelerate.dispatch_model(quantized_model, DISK_MAP, offload_dir=offload_dir)
    serve_quantized_weights(quantized_model)
    assert (offload_dir / "model.layers.0.mlp.up_proj.weight.codes.dat").is_file()
    assert not (offload_dir / "model.layers.0.mlp.up_proj.weight.dat").exists()  # no float
    assert torch.equal(_logits(quantized_model, token_ids), expected)
    quantized_model.save_pretrained(tmp_path / "saved")
    assert torch.equal(_logits(_load(tmp_path / "saved"), token_ids), expected)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_from_pretrained_serves_the_hooks_it_dispatched(
    tiny_llama_dir, token_ids, tmp_path, weights
):
    """from_pretrained offloads to the CPU only beside a GPU; its dispatch builds the hooks
    cpu_offload builds (weights map: the state_dict of the CPU modules), then postprocesses."""
    config = QuantaConfig(weights=weights)
    expected = _logits(_load(tiny_llama_dir, quantization_config=config), token_ids)
    model = _load(tiny_llama_dir, quantization_config=config, device_map={"": "cpu"})
    accelerate.cpu_offload(model, execution_device="cpu")
    model.hf_quantizer.postprocess_model(model)
    assert torch.equal(_logits(model, token_ids), expected)
    model.save_pretrained(tmp_path)
    assert torch.equal(_logits(_load(tmp_path), token_ids), expected)
