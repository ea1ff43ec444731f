import pytest
import torch

import quanta.qkernels  # noqa: F401  (registers torch.ops.quanta.*)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device")


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every available device; each test also gets a fresh, fixed seed."""
    torch.manual_seed(0)
    return torch.device(request.param)
