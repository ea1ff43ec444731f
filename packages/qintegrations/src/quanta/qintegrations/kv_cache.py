"""A quantized key/value cache for Transformers' `generate`: int2/int4/int8/float8 states.

Pass `QuantizedKVCache(model.config, qtype="int4")` as `generate(..., cache=...)` (the argument
Transformers 5 calls `past_key_values` in older releases). Transformers' own `QuantizedCache`
picks its backend from a fixed list (quanto, HQQ, fp8), so this is a `Cache` subclass instead.

Each layer keeps the most recent `residual_length` tokens in float and quantizes older tokens
once, as they leave that window, with quanta's weight layouts (`layout_for(qtype)`): codes are
appended and never requantized, unlike `QuantizedCache`, which requantizes the whole past each
time its window fills. Keys are grouped per channel by default (groups of `group_size` tokens of
one channel, as in KIVI, since keys have outlier channels) and values per token (groups of
`group_size` channels of one token).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, DynamicLayer, get_layer_types_and_kwargs

from quanta.qmodules import QWeightTensor, layout_for
from quanta.qtypes import QType, to_qtype

__all__ = ["AXES", "QuantizedKVCache", "QuantizedKVLayer"]

#: how a group is laid out: along the tokens of one channel, or the channels of one token
AXES = ("channel", "token")


class TokenGrouping:
    """How states [batch, heads, tokens, head_dim] map onto rows of one quantization group each.

    Rows are ordered tokens (or blocks of tokens) first, so appending tokens appends rows.
    """

    def __init__(self, axis: str, group_size: int) -> None:
        self.axis = axis
        self.group_size = group_size
        #: the tokens quantized together: a whole group per channel, or any number per token
        self.block = group_size if axis == "channel" else 1

    def to_rows(self, states: torch.Tensor) -> torch.Tensor:
        """[B, H, n, D] (n a multiple of `block`) -> [rows, group_size]."""
        batch, heads, tokens, head_dim = states.shape
        if self.axis == "token":
            return states.permute(2, 0, 1, 3).reshape(-1, self.group_size)
        blocks = states.reshape(batch, heads, tokens // self.block, self.block, head_dim)
        return blocks.permute(2, 0, 1, 4, 3).reshape(-1, self.group_size)

    def from_rows(self, rows: torch.Tensor, batch: int, heads: int, head_dim: int) -> torch.Tensor:
        """The inverse of `to_rows`: [rows, group_size] -> [B, H, n, D]."""
        if self.axis == "token":
            return rows.reshape(-1, batch, heads, head_dim).permute(1, 2, 0, 3)
        blocks = rows.reshape(-1, batch, heads, head_dim, self.block)
        return blocks.permute(1, 2, 0, 4, 3).reshape(batch, heads, -1, head_dim)

    def leading(self, tokens: int) -> int:
        """The number of token rows (or blocks) that `tokens` quantized tokens span."""
        return tokens // self.block


class QuantizedStates:
    """The quantized past of one state tensor (keys or values) of one layer, appendable."""

    def __init__(self, qtype: QType, grouping: TokenGrouping) -> None:
        self.qtype = qtype
        self.grouping = grouping
        self.layout = layout_for(qtype)
        self.tensor: QWeightTensor | None = None
        self.tokens = 0

    def append(self, states: torch.Tensor) -> None:
        """Quantize `states` [B, H, n, D] and append them after the tokens already held."""
        rows = self.grouping.to_rows(states)
        new = self.layout.quantize(rows, self.qtype, self.layout_group_size).inner_tensors()
        # the layouts' scale math maps a group holding NaN onto finite codes: a NaN scale
        # makes it dequantize to NaN, as the float cache would give
        new["scale"] = new["scale"].masked_fill(rows.isnan().any(-1, keepdim=True), math.nan)
        if self.tensor is not None:
            old = self.tensor.inner_tensors()
            new = {name: torch.cat([old[name], part]) for name, part in new.items()}
        self.tensor = self._from_parts(new)
        self.tokens += states.shape[-2]

    @property
    def layout_group_size(self) -> int | None:
        """The group size the layout takes (None for per-row scaled 8-bit codes)."""
        return self.grouping.group_size if self.layout.grouped else None

    def _from_parts(self, parts: dict[str, torch.Tensor]) -> QWeightTensor:
        rows = next(iter(parts.values())).shape[0]
        shape = (rows, self.grouping.group_size)
        return self.layout.from_parts(parts, self.qtype, self.layout_group_size, shape)

    def dequantize(self, like: torch.Tensor) -> torch.Tensor:
        """The states held, [B, H, tokens, D] in `like`'s dtype (empty when none)."""
        if self.tensor is None:
            return like[..., :0, :]
        batch, heads, _, head_dim = like.shape
        rows = self.tensor.dequantize().to(like.dtype)
        return self.grouping.from_rows(rows, batch, heads, head_dim)

    def map_batch(self, fn: Callable[[torch.Tensor, int], torch.Tensor], batch: int) -> None:
        """Apply `fn(tensor, batch_dim)` to every stored part (beam search, batch expansion)."""
        if self.tensor is None:
            return
        leading = self.grouping.leading(self.tokens)

        def apply(part: torch.Tensor) -> torch.Tensor:
            mapped = fn(part.reshape(leading, batch, -1, part.shape[-1]), 1)
            return mapped.reshape(-1, part.shape[-1])

        parts = {name: apply(part) for name, part in self.tensor.inner_tensors().items()}
        self.tensor = self._from_parts(parts)

    def stored_bytes(self) -> int:
        """The bytes of every stored part (codes, scales, zero points)."""
        if self.tensor is None:
            return 0
        return sum(part.nbytes for part in self.tensor.inner_tensors().values())


class QuantizedKVLayer(DynamicLayer):
    """One attention layer's cache: a quantized past and a float window of recent tokens.

    `self.keys` / `self.values` hold the float window [B, H, r, D] (r <= residual_length, plus
    up to a group of tokens while keys are grouped per channel).
    """

    is_croppable = False

    def __init__(
        self,
        qtype: QType,
        group_size: int,
        residual_length: int,
        key_axis: str = "channel",
        value_axis: str = "token",
    ) -> None:
        super().__init__()
        self.qtype = qtype
        self.group_size = group_size
        self.residual_length = residual_length
        self.key_axis = key_axis
        self.value_axis = value_axis
        self.cumulative_length = 0
        self._reset_quantized()

    def _reset_quantized(self) -> None:
        self.quantized_keys = QuantizedStates(
            self.qtype, TokenGrouping(self.key_axis, self.group_size)
        )
        self.quantized_values = QuantizedStates(
            self.qtype, TokenGrouping(self.value_axis, self.group_size)
        )

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new states; return the whole past (dequantized) followed by them."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        keys = torch.cat([self.quantized_keys.dequantize(key_states), self.keys, key_states], -2)
        values = torch.cat(
            [self.quantized_values.dequantize(value_states), self.values, value_states], -2
        )
        self.keys = self._flush(self.quantized_keys, torch.cat([self.keys, key_states], -2))
        self.values = self._flush(self.quantized_values, torch.cat([self.values, value_states], -2))
        return keys, values

    def _flush(self, quantized: QuantizedStates, window: torch.Tensor) -> torch.Tensor:
        """Quantize the oldest tokens of `window` beyond `residual_length` (whole blocks);
        return the tokens left in float."""
        block = quantized.grouping.block
        leaving = (window.shape[-2] - self.residual_length) // block * block
        if leaving <= 0:
            return window
        quantized.append(window[..., :leaving, :])
        return window[..., leaving:, :].clone()  # a view would keep the whole window alive

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def stored_bytes(self) -> int:
        """The bytes this layer holds: quantized parts plus the float window."""
        window = 0 if not self.is_initialized else self.keys.nbytes + self.values.nbytes
        return self.quantized_keys.stored_bytes() + self.quantized_values.stored_bytes() + window

    def reset(self) -> None:
        super().reset()
        self._reset_quantized()

    def crop(self, tokens_to_remove: int) -> None:
        """Only `crop(0)` (a no-op): quantized tokens cannot be taken back."""
        if tokens_to_remove != 0:
            raise ValueError(
                f"QuantizedKVCache cannot crop {tokens_to_remove} tokens: its quantized past "
                "cannot be rolled back (assisted decoding needs a DynamicCache)"
            )

    def _map_batch(self, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
        if not self.is_initialized:
            return
        batch = self.keys.shape[0]
        self.quantized_keys.map_batch(fn, batch)
        self.quantized_values.map_batch(fn, batch)
        self.keys, self.values = fn(self.keys, 0), fn(self.values, 0)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch for beam search (codes move as they are: no requantization)."""
        self._map_batch(lambda t, dim: t.index_select(dim, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t, dim: t.repeat_interleave(repeats, dim=dim))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t, dim: t.index_select(dim, indices.to(t.device)))


class QuantizedKVCache(Cache):
    """A key/value cache whose past is stored quantized; pass it to `generate(cache=...)`.

    qtype: "int4" (default), "int2", "int8" or a float8 ("fp8", "e4m3", "e5m2"), or a QType.
    group_size: the values sharing a scale (and zero point for int2/int4).
    residual_length: the most recent tokens kept in float.
    key_axis / value_axis: "channel" (a group is `group_size` tokens of one channel) or "token"
    (a group is `group_size` channels of one token, which must divide head_dim).
    """

    def __init__(
        self,
        config: PreTrainedConfig,
        qtype: QType | str = "int4",
        group_size: int = 32,
        residual_length: int = 32,
        key_axis: str = "channel",
        value_axis: str = "token",
    ) -> None:
        qtype = to_qtype(qtype, "qtype")
        text_config = checked_text_config(config)
        check_positive_int("group_size", group_size, minimum=1)
        check_positive_int("residual_length", residual_length, minimum=0)
        head_dim = getattr(text_config, "head_dim", None) or (
            text_config.hidden_size // text_config.num_attention_heads
        )
        for name, axis in (("key_axis", key_axis), ("value_axis", value_axis)):
            if axis not in AXES:
                raise ValueError(f"{name} must be one of {AXES}, got {axis!r}")
            if axis == "token" and head_dim % group_size != 0:
                raise ValueError(
                    f"group_size={group_size} must divide the model's head_dim ({head_dim}) "
                    f"when {name}='token'"
                )
        self.qtype = qtype
        layers = [
            QuantizedKVLayer(qtype, group_size, residual_length, key_axis, value_axis)
            for _ in range(text_config.num_hidden_layers)
        ]
        super().__init__(layers=layers)

    def stored_bytes(self) -> int:
        """The bytes the cache holds now: every layer's quantized parts and float window."""
        return sum(layer.stored_bytes() for layer in self.layers)


def checked_text_config(config: object) -> PreTrainedConfig:
    """The decoder config of `config`, refused unless every layer is full attention."""
    if not isinstance(config, PreTrainedConfig):
        raise TypeError(
            "config must be a transformers PreTrainedConfig (model.config), "
            f"got {type(config).__name__}"
        )
    text_config = config.get_text_config(decoder=True)
    layer_types, _ = get_layer_types_and_kwargs(text_config)
    others = sorted(set(layer_types) - {"full_attention"})
    if others:
        raise ValueError(
            f"QuantizedKVCache supports models whose layers are all full attention; "
            f"{type(config).__name__} also has {others}"
        )
    return text_config


def check_positive_int(name: str, value: object, minimum: int) -> None:
    """Refuse a non-int (bools too) or an int below `minimum`, by name."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
