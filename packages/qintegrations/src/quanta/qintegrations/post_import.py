"""Run code right after a module is imported, without importing it first.

`import quanta.qintegrations` must stay light (no transformers, no torch), yet Transformers must
know the "quanta" quant_method before any `from_pretrained`: the registration waits for
`transformers.quantizers.auto` and runs the moment it is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType


def when_imported(name: str, callback: Callable[[], object]) -> None:
    """Call `callback()` now if module `name` is imported, else right after its import."""
    if name in sys.modules:
        callback()
        return
    sys.meta_path.insert(0, _PostImportFinder(name, callback))


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds `name` with the other finders and wraps its loader to call back after it runs."""

    def __init__(self, name: str, callback: Callable[[], object]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: object, target: object = None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the lookup below must not find this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        callback = self.callback

        def exec_then_call(module: ModuleType) -> None:
            exec_module(module)
            callback()

        spec.loader.exec_module = exec_then_call
        return spec
