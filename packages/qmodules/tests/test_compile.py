"""torch.compile(fullgraph=True) on frozen models."""

import pytest
import torch
from torch import nn

from quanta.qmodules import freeze, quantize

# the compiled graph runs the same ops; only fusion and reduction order may differ
COMPILE_TOLERANCE = 1e-3


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_compile_fullgraph_matches_eager(weights, uniform_inputs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    freeze(quantize(model, weights=weights))
    inputs = uniform_inputs(4, 256)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(inputs), model(inputs), atol=COMPILE_TOLERANCE, rtol=COMPILE_TOLERANCE
        )
