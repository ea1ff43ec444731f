"""Checkpoints written by an earlier quanta (tests/fixtures/make_checkpoints.py, commit 00ffeb4)
load bit-identically: the same stored tensors, and the same outputs up to the float rounding of
the CPU that runs them (the fixtures' outputs were recorded on AVX2; an AVX-512/AMX machine sums
in another order, through quanta's kernels and oneDNN's alike)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quanta.qio import load
from quanta.qmodules import QTensor

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_checkpoints

FIXTURES = make_checkpoints.FIXTURES


def plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.dequantize() if isinstance(tensor, QTensor) else tensor


def same_output(output: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to a few roundings of the output's dtype: a changed meaning of any stored tensor
    moves outputs by far more."""
    eps = torch.finfo(output.dtype).eps
    torch.testing.assert_close(output, expected, rtol=4 * eps, atol=1e-5, check_dtype=False)


def stored_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: tensor for key, tensor in model.state_dict().items()}


@pytest.mark.parametrize("name", make_checkpoints.MLP_FIXTURES)
def test_quanta_checkpoint_of_an_earlier_version_loads_bit_identically(name):
    folder = FIXTURES / name
    expected = load_file(folder / "expected.safetensors")
    stored = load_file(folder / "model.safetensors")
    with torch.device("meta"):
        skeleton = make_checkpoints.mlp(expected["input"].dtype)
    model = load(folder, skeleton, progress=False)
    state = stored_state(model)
    assert state.keys() == stored.keys()
    for key, tensor in stored.items():
        assert state[key].dtype == tensor.dtype, key
        assert torch.equal(state[key], tensor), key
    with torch.inference_mode():
        same_output(plain(model(expected["input"])), expected["output"])


def test_transformers_folder_of_an_earlier_version_loads_bit_identically():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("quanta.qintegrations.transformers")  # registers quant_method "quanta"
    folder = FIXTURES / "transformers-int4"
    expected = load_file(folder / "expected.safetensors")
    model = transformers.LlamaForCausalLM.from_pretrained(folder)
    with torch.inference_mode():
        same_output(model(expected["input"]).logits, expected["output"])
