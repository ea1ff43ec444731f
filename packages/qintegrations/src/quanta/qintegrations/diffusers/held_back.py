"""HeldBackTensors: quanta's stored tensors, kept out of Diffusers' own loader.

Diffusers loads a checkpoint key by key into the model's float-shaped state_dict, and its
single-file loader converts any checkpoint whose keys differ from the float model's. So each
quanta module's stored tensors (`weight.codes`, `weight.scale`, `weight.zero_point`,
activation scales) are taken out of every shard. Once all of a quantized weight's have been
read, one placeholder under the float name `<module>.weight` replaces them: its odd shape
routes it to the quantizer, which assigns the held tensors to the module at once. The scales
of modules quantizing activations only (QLayerNorm) have no float name: they are assigned
after loading.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

from quanta.qintegrations.module_weights import CODES, WEIGHT

# The float-named placeholder: an empty tensor never has a weight's shape.
PLACEHOLDER = torch.empty(0, dtype=torch.int64)
BIAS = "bias"


class HeldBackTensors:
    """The stored tensors of the quanta modules `module_names`, collected shard by shard;
    `quantized_weights` names those whose weight is quantized (they get a placeholder)."""

    def __init__(self, module_names: Iterable[str], quantized_weights: Iterable[str]) -> None:
        self.module_names = set(module_names)
        self.quantized_weights = set(quantized_weights)
        self.expected: dict[str, set[str]] | None = None  # module -> its stored names
        self.held: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)

    def _owner(self, key: str) -> tuple[str, str] | None:
        """(module, name relative to it) if `key` is a stored tensor of a quantized module."""
        for module in (key.rpartition(".")[0], key.rpartition(f".{WEIGHT}.")[0]):
            if module in self.module_names:
                name = key[len(module) + 1 :]
                return None if name in (WEIGHT, BIAS) else (module, name)
        return None

    def _group(self, keys: Iterable[str]) -> dict[str, set[str]]:
        grouped = defaultdict(set)
        for key in keys:
            owner = self._owner(key)
            if owner is not None:
                grouped[owner[0]].add(owner[1])
            elif key.endswith(f".{CODES}"):
                raise ValueError(
                    f"the checkpoint holds quanta's frozen layout ({key}) but the "
                    "quantization_config has no per-module config for that module; for "
                    "from_single_file pass quantization_config=QuantaConfig.from_single_file(path)"
                )
        return dict(grouped)

    def expect(self, checkpoint_keys: list[str]) -> list[str]:
        """Record every shard's keys; return them as Diffusers should see them."""
        self.expected = self._group(checkpoint_keys)
        kept = [key for key in checkpoint_keys if self._owner(key) is None]
        placeholders = [module for module in self.expected if module in self.quantized_weights]
        return kept + [f"{module}.{WEIGHT}" for module in placeholders]

    def take(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hold back the stored tensors of `state_dict` (one shard, or a whole single file)."""
        expected = self.expected if self.expected is not None else self._group(state_dict)
        for key in list(state_dict):
            owner = self._owner(key)
            if owner is not None:
                self.held[owner[0]][owner[1]] = state_dict.pop(key)
        for module, names in expected.items():
            complete = module in self.held and set(self.held[module]) == names
            if complete and module in self.quantized_weights:
                state_dict[f"{module}.{WEIGHT}"] = PLACEHOLDER
        return state_dict

    def pop(self, module: str) -> dict[str, torch.Tensor] | None:
        """The held tensors of `module` (names relative to it), or None if it has none."""
        return self.held.pop(module, None)

    def pop_all(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every tensor still held (activation-only modules' scales), by module."""
        held, self.held = dict(self.held), defaultdict(dict)
        return held
