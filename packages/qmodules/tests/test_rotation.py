"""Input rotation of activation-quantized linears: exact in float, smaller activation error."""

import copy

import pytest
import torch
from torch import nn

from quanta.qmodules import freeze, quantize
from quanta.qmodules.modules.rotation import hadamard_block_size, hadamard_transform, random_signs

COMPILE_TOLERANCE = 1e-3  # as in test_compile.py: only fusion and reduction order differ


def sylvester(block: int) -> torch.Tensor:
    """The normalized Hadamard matrix of a power-of-two size, built by Kronecker products."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), h)
    return h / block**0.5


@pytest.mark.parametrize("block", [1, 2, 8, 64])
def test_hadamard_transform_is_x_times_signs_then_block_hadamard(block):
    features = 4 * block
    signs = random_signs(features, block, seed=block)
    x = torch.randn(3, 5, features, dtype=torch.float64)
    rotation = torch.block_diag(*[torch.diag(s.double()) @ sylvester(block) for s in signs])
    torch.testing.assert_close(hadamard_transform(x, signs), x @ rotation)
    # orthogonal: norms are kept
    torch.testing.assert_close(hadamard_transform(x, signs).norm(dim=-1), x.norm(dim=-1))


def test_default_block_size_is_the_largest_dividing_power_of_two():
    assert [hadamard_block_size(n) for n in (576, 1536, 4096, 7, 96)] == [64, 512, 512, 1, 32]


@pytest.mark.parametrize("block_size,features", [(3, 12), (16, 24), (0, 8)])
def test_bad_block_sizes_are_refused(block_size, features):
    with pytest.raises(ValueError, match="block_size"):
        random_signs(features, block_size, seed=0)


def _static_w8a8(linear: nn.Linear, inputs: torch.Tensor, block_size: int | None) -> nn.Linear:
    """A W8A8 static copy, rotated when block_size is set, scales set to max|x| / 127."""
    qlinear = quantize(copy.deepcopy(linear), weights="int8", activations="int8")
    if block_size:
        qlinear.rotate_input(block_size, seed=0)
        signs = qlinear.input_rotation
        inputs = hadamard_transform(inputs, signs)
    with torch.no_grad():
        qlinear.input_scale.fill_(float(inputs.abs().max()) / 127)
        qlinear.disable_output_quantization()
    return freeze(qlinear)


def _outlier_inputs(features: int = 256) -> torch.Tensor:
    torch.manual_seed(0)
    inputs = torch.randn(64, features)
    inputs[:, 3] *= 50  # one outlier channel, as in LLM MLP inputs
    return inputs


def test_rotation_is_exact_in_float():
    torch.manual_seed(0)
    linear = nn.Linear(256, 32)
    inputs = _outlier_inputs()
    qlinear = quantize(copy.deepcopy(linear), weights="int8", activations="int8")
    qlinear.rotate_input(64, seed=1)
    rotated = hadamard_transform(inputs, qlinear.input_rotation)
    torch.testing.assert_close(
        nn.functional.linear(rotated, qlinear.float_weight, qlinear.bias), linear(inputs),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip


def test_rotation_shrinks_the_error_of_per_tensor_activations():
    torch.manual_seed(0)
    linear = nn.Linear(256, 32)
    inputs = _outlier_inputs()
    expected = linear(inputs)
    errors = {}
    with torch.no_grad():
        for block in (None, 256):
            output = _static_w8a8(linear, inputs, block)(inputs)
            errors[block] = float((output - expected).norm() / expected.norm())
    assert errors[256] < errors[None] / 4, errors  # measured 0.011 vs 0.100


def test_rotated_state_dict_round_trips_and_compiles():
    torch.manual_seed(0)
    linear = nn.Linear(256, 32)
    inputs = _outlier_inputs()
    qlinear = _static_w8a8(linear, inputs, 128)
    fresh = freeze(quantize(copy.deepcopy(linear), weights="int8", activations="int8"))
    fresh.load_state_dict(qlinear.state_dict())
    with torch.no_grad():
        expected = qlinear(inputs)
        assert torch.equal(fresh(inputs), expected)
        compiled = torch.compile(fresh, fullgraph=True)(inputs)
    torch.testing.assert_close(compiled, expected, rtol=COMPILE_TOLERANCE, atol=COMPILE_TOLERANCE)


def test_rotate_refuses_frozen_twice_rotated_and_smoothing_after():
    qlinear = quantize(nn.Linear(64, 8), weights="int8", activations="int8")
    qlinear.rotate_input(64)
    with pytest.raises(ValueError, match="already rotated"):
        qlinear.rotate_input(64)
    with pytest.raises(ValueError, match="before rotating"):
        qlinear.smooth_input(torch.ones(64))
    frozen = freeze(quantize(nn.Linear(64, 8), weights="int8", activations="int8"))
    with pytest.raises(ValueError, match="not yet frozen"):
        frozen.rotate_input(64)
