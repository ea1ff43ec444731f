"""The package imports with torch alone; the CLI does not load the demo's heavy packages."""

import subprocess
import sys

import torch

import quanta.qintegrations
from quanta.qintegrations.demo.mobilenet import MobileNetV2


def test_version():
    assert quanta.qintegrations.__version__ == "0.1.0"


def test_cli_import_is_light():
    code = (
        "import sys, quanta.qintegrations.cli; "
        "print(any(m in sys.modules for m in ('transformers', 'torch', 'quanta.qmodules')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_mobilenet_v2_has_torchvision_layout():
    model = MobileNetV2().eval()
    # torchvision's mobilenet_v2 state_dict: 314 entries, 3,504,872 parameters.
    assert len(model.state_dict()) == 314
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
