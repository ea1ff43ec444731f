"""Run in a fresh environment holding only the built wheels: every layer imports, the API works."""

import importlib

import torch

for layer in ("qtypes", "qkernels", "qmodules", "qcalib", "qio", "qintegrations"):
    module = importlib.import_module(f"quanta.{layer}")
    print(f"quanta.{layer} {module.__version__}")

from quanta import freeze, qint4, quantize  # noqa: E402

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
x = torch.randn(4, 64)
expected = model(x)
freeze(quantize(model, weights=qint4))
error = (model(x) - expected).norm() / expected.norm()
assert error < 0.1, f"int4 relative error {error:.3f}"
print(f"wheel install OK: int4 relative error {error:.4f}")
