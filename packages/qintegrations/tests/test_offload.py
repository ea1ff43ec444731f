"""Offloading a quanta-quantized model with accelerate's hooks: same outputs, weights still
quantized, and save_pretrained afterwards."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

from quanta.qintegrations.offload import (  # noqa: E402
    offload_unsupported_weights,
    serve_quantized_weights,
)
from quanta.qintegrations.transformers import QuantaConfig  # noqa: E402
from quanta.qmodules import QBitsTensor  # noqa: E402

AutoModelForCausalLM = transformers.AutoModelForCausalLM
# Both layers on disk, the rest beside them on the CPU, which computes (nothing CPU-offloaded).
DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "disk",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def _load(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


@torch.no_grad()  # what generate() and pipelines use; see test_inference_mode_is_refused
def _logits(model, token_ids):
    return model(token_ids).logits


@pytest.fixture
def int4_model(tiny_llama_dir):
    return _load(tiny_llama_dir, quantization_config=QuantaConfig(weights="int4"))


@pytest.mark.parametrize("offload_buffers", [False, True], ids=["params", "buffers"])
def test_cpu_offload_serves_the_stored_quantized_weights(int4_model, token_ids, offload_buffers):
    expected = _logits(int4_model, token_ids)
    layer = int4_model.model.layers[1].mlp.up_proj
    codes = layer.weight.codes.data_ptr()
    accelerate.cpu_offload(int4_model, execution_device="cpu", offload_buffers=offload_buffers)
    serve_quantized_weights(serve_quantized_weights(int4_model))  # a second call changes nothing
    assert layer.weight.is_meta
    served = layer._hf_hook.weights_map["weight"]
    assert isinstance(served, QBitsTensor) and served.codes.data_ptr() == codes  # no copy
    assert torch.equal(_logits(int4_model, token_ids), expected)
    assert torch.equal(_logits(int4_model, token_ids), expected)


@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")
def test_disk_offload_writes_the_quantized_parts_then_saves(int4_model, token_ids, tmp_path):
    expected = _logits(int4_model, token_ids)
    offload_dir = tmp_path / "offload"
    accelerate.dispatch_model(int4_model, DISK_MAP, offload_dir=offload_dir)
    serve_quantized_weights(int4_model)
    assert (offload_dir / "model.layers.0.mlp.up_proj.weight.codes.dat").is_file()
    assert not (offload_dir / "model.layers.0.mlp.up_proj.weight.dat").exists()  # no float
    assert torch.equal(_logits(int4_model, token_ids), expected)
    int4_model.save_pretrained(tmp_path / "saved")
    assert torch.equal(_logits(_load(tmp_path / "saved"), token_ids), expected)


def test_from_pretrained_serves_the_hooks_it_dispatched(tiny_llama_dir, token_ids, tmp_path):
    """from_pretrained offloads to the CPU only beside a GPU; its dispatch builds the hooks
    cpu_offload builds (weights map: the state_dict of the CPU modules), then postprocesses."""
    config = QuantaConfig(weights="int4")
    expected = _logits(_load(tiny_llama_dir, quantization_config=config), token_ids)
    model = _load(tiny_llama_dir, quantization_config=config, device_map={"": "cpu"})
    accelerate.cpu_offload(model, execution_device="cpu")
    model.hf_quantizer.postprocess_model(model)
    assert torch.equal(_logits(model, token_ids), expected)
    model.save_pretrained(tmp_path)
    assert torch.equal(_logits(_load(tmp_path), token_ids), expected)


def test_inference_mode_is_refused(int4_model, token_ids):
    """There a QTensor's .to() would hand accelerate the dequantized float weight."""
    accelerate.cpu_offload(int4_model, execution_device="cpu")
    serve_quantized_weights(int4_model)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"torch\.no_grad\(\)"):
        int4_model(token_ids)


@pytest.mark.parametrize(
    ("weights", "unsupported"),
    [("int4", []), ("int8", ["qint8 (QBytesTensor)"])],
)
def test_weights_accelerate_cannot_offload_are_listed(tiny_llama_dir, weights, unsupported):
    """accelerate rebuilds a parameter as type(param)(tensor, requires_grad=...), which
    QBytesTensor does not support (it names QBitsTensor among the types it knows)."""
    model = _load(tiny_llama_dir, quantization_config=QuantaConfig(weights=weights))
    assert offload_unsupported_weights(model) == unsupported
