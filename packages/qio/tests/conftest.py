"""Shared builders for the qio tests, as fixtures (tests run with --import-mode=importlib)."""

from collections.abc import Callable

import pytest
import torch
from torch import nn

from quanta.qmodules import QTensor, freeze, observe_activations, quantize

IN_FEATURES, HIDDEN, OUT_FEATURES = 256, 96, 10


class MLP(nn.Module):
    """Linear, LayerNorm, ReLU, Linear: weights, a LayerNorm output and a chain of activations."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, HIDDEN, dtype=dtype)
        self.norm = nn.LayerNorm(HIDDEN, dtype=dtype)
        self.fc2 = nn.Linear(HIDDEN, OUT_FEATURES, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def _calibrate(model: nn.Module, inputs: torch.Tensor) -> None:
    """Static activation scales from absmax / qmax (what quanta.qcalib.Calibration converges to
    with momentum 0; qcalib is a layer above qio, so its tests do not import it)."""

    def observe(module: nn.Module, kind: str, tensor: torch.Tensor) -> None:
        if kind in ("input", "output"):
            scale = getattr(module, f"{kind}_scale")
            value = tensor.detach().abs().amax().float() / module.qconfig.activations.qmax
            scale.copy_(torch.maximum(scale.float(), value).to(scale.dtype))

    with torch.no_grad(), observe_activations(observe):
        for module in model.modules():
            for name in ("input_scale", "output_scale"):
                if getattr(module, name, None) is not None:
                    getattr(module, name).fill_(torch.finfo(torch.float16).tiny)
        model(inputs)


def _inputs(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 1234) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=generator) * 2 - 1).to(dtype)


def _frozen_mlp(
    weights: str = "int4",
    activations: str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **options,
) -> MLP:
    torch.manual_seed(seed)
    model = quantize(MLP(dtype), weights=weights, activations=activations, **options)
    if activations is not None and options.get("activations_mode", "static") == "static":
        _calibrate(model, _inputs(32, IN_FEATURES, dtype=dtype, seed=7))
    return freeze(model)


@pytest.fixture
def frozen_mlp() -> Callable[..., MLP]:
    """A quantized, calibrated (static activations) and frozen MLP."""
    return _frozen_mlp


@pytest.fixture
def meta_mlp() -> Callable[..., MLP]:
    """The MLP architecture built on the meta device: no memory for its weights."""

    def build(dtype: torch.dtype = torch.float32) -> MLP:
        with torch.device("meta"):
            return MLP(dtype)

    return build


@pytest.fixture
def float_mlp() -> Callable[..., MLP]:
    """The MLP architecture with freshly initialised float weights."""
    return MLP


@pytest.fixture
def inputs() -> Callable[..., torch.Tensor]:
    """Reproducible U(-1, 1) inputs of a shape and dtype."""
    return _inputs


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """A module output as a plain tensor (quantized activations are dequantized)."""
    return tensor.dequantize() if isinstance(tensor, QTensor) else tensor


@pytest.fixture
def as_plain() -> Callable[[torch.Tensor], torch.Tensor]:
    """Dequantize a quantized output; plain tensors pass through."""
    return plain
