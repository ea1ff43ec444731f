import importlib

import quanta


def test_every_export_resolves_to_its_layer_object():
    for name, module in quanta._EXPORTS.items():
        assert getattr(quanta, name) is getattr(importlib.import_module(module), name)


def test_all_lists_the_exports():
    assert set(quanta.__all__) == set(quanta._EXPORTS)
    assert {"quantize", "freeze", "qint4", "qint8"} <= set(dir(quanta))


def test_every_layer_is_reachable_through_the_namespace():
    for layer in ("qtypes", "qkernels", "qmodules", "qcalib", "qio", "qintegrations"):
        assert importlib.import_module(f"quanta.{layer}").__version__


def test_the_user_api_brings_the_integrations_along():
    """So that quanta.quantize handles Transformers' Conv1D once Transformers is imported."""
    import sys

    quanta.quantize  # noqa: B018
    assert "quanta.qintegrations" in sys.modules
