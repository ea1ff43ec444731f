"""Run in a fresh environment holding only the built wheels: every layer imports, the API works."""

import importlib

import torch

for layer in ("qtypes", "qkernels", "qmodules", "qcalib", "qio", "qintegrations"):
    module = importlib.import_module(f"quanta.{layer}")
    print(f"quanta.{layer} {module.__version__}")

from quanta import freeze, qint4, quantize  # noqa: E402

# Issue #2's acceptance case: Linear(512 -> 256), U(-1, 1) inputs, int4 group 128: error < 8%.
torch.manual_seed(0)
model = torch.nn.Linear(512, 256)
x = torch.rand(64, 512) * 2 - 1
expected = model(x)
freeze(quantize(model, weights=qint4))
error = (model(x) - expected).norm() / expected.norm()
assert error < 0.08, f"int4 relative error {error:.3f}"
print(f"wheel install OK: int4 relative error {error:.4f}")
