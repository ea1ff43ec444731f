"""Importing a layer loads nothing above it, and the meta package re-exports the user API."""

import subprocess
import sys

import pytest

LAYERS = ["qtypes", "qkernels", "qmodules", "qcalib", "qio", "qintegrations"]
# What each layer may load; everything else in LAYERS is above it or beside it.
ALLOWED = {
    "qtypes": {"qtypes"},
    "qkernels": {"qkernels"},
    "qmodules": {"qtypes", "qkernels", "qmodules"},
    "qcalib": {"qtypes", "qkernels", "qmodules", "qcalib"},
    "qio": {"qtypes", "qkernels", "qmodules", "qio"},
    "qintegrations": set(LAYERS),
}


def _loaded_layers(statement: str) -> set[str]:
    code = (
        f"import sys; {statement}; "
        "print(' '.join(sorted({m.split('.')[1] for m in sys.modules "
        "if m.startswith('quanta.') and m.count('.') >= 1})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("layer", LAYERS)
def test_importing_a_layer_loads_nothing_above_it(layer):
    loaded = _loaded_layers(f"import quanta.{layer}")
    assert layer in loaded
    assert loaded <= ALLOWED[layer], f"quanta.{layer} also loaded {sorted(loaded - ALLOWED[layer])}"


def test_meta_package_is_lazy():
    assert _loaded_layers("import quanta") == set()


def test_user_api_from_meta_package():
    import torch

    from quanta import freeze, qint4, quantize

    model = torch.nn.Sequential(torch.nn.Linear(128, 16))
    freeze(quantize(model, weights=qint4))
    assert model(torch.randn(2, 128)).shape == (2, 16)


def test_unknown_attribute_of_meta_package():
    import quanta

    with pytest.raises(AttributeError, match="no_such_name"):
        quanta.no_such_name  # noqa: B018
