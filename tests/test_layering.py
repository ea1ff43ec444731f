"""Importing a layer loads nothing above it, and the meta package re-exports the user API."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

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


SOURCES = Path(__file__).parent.parent / "packages"
# nn.Module internals an upper layer must not touch: it asks the layer below for a public hook
MODULE_INTERNALS = {"_parameters", "_buffers", "_non_persistent_buffers_set"}


def _layer_sources(layer: str) -> list[Path]:
    return sorted((SOURCES / layer / "src" / "quanta" / layer).rglob("*.py"))


def _cross_layer_imports(layer: str) -> list[tuple[Path, str, str]]:
    """(file, imported module, name) for every import of another layer's names."""
    found = []
    for path in _layer_sources(layer):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quanta."):
                found += [(path, node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(path, a.name, "") for a in node.names if a.name.startswith("quanta.")]
    return [item for item in found if item[1].split(".")[1] != layer]


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_public_names_of_the_layers_below(layer):
    private = []
    for path, module, name in _cross_layer_imports(layer):
        other = module.split(".")[1]
        public = set(importlib.import_module(f"quanta.{other}").__all__) | {"__version__"}
        if module != f"quanta.{other}" or (name and name not in public):
            private.append(f"{path.name}: {module} {name}".strip())
    assert not private, f"quanta.{layer} imports private names of other layers: {private}"


@pytest.mark.parametrize("layer", ["qcalib", "qio", "qintegrations"])
def test_upper_layers_touch_no_module_internals(layer):
    touched = [
        f"{path.name}:{node.lineno} .{node.attr}"
        for path in _layer_sources(layer)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in MODULE_INTERNALS
    ]
    assert not touched, f"quanta.{layer} reaches into nn.Module internals: {touched}"


def test_only_the_layout_registry_branches_on_the_kind_of_qtype():
    mentions = [
        f"{path.relative_to(SOURCES)}"
        for path in SOURCES.glob("*/src/quanta/**/*.py")
        if "is_packed" in path.read_text()
    ]
    assert not mentions, f"branching on qtype.is_packed outside the layout registry: {mentions}"
