"""Export a quantized Transformers model to the formats serving engines load.

`export(model, output, format)` writes compressed-tensors (vLLM, SGLang) or GGUF (llama.cpp,
Ollama). Where quanta's quantization maps onto the format it is written exactly; where it does
not, the export is refused with the nearest exact option, or requantized when asked.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from quanta.qintegrations.export.compressed_tensors import (
    load_compressed_tensors,
    save_compressed_tensors,
)

FORMATS = ("compressed-tensors", "gguf")

__all__ = ["FORMATS", "export", "load_compressed_tensors", "save_compressed_tensors"]


def export(
    model: nn.Module,
    output: str | os.PathLike,
    format: str,
    *,
    tokenizer: object | None = None,
    requantize: bool = False,
) -> Path:
    """Write `model` (quantized and frozen by quanta) to `output` in `format`, one of FORMATS;
    returns the path written. `requantize` allows the modules that do not map exactly to be
    requantized to the nearest scheme the format holds (the error it adds is warned)."""
    if format == "compressed-tensors":
        return save_compressed_tensors(model, output, tokenizer=tokenizer, requantize=requantize)
    if format == "gguf":
        from quanta.qintegrations.export.gguf import save_gguf  # its gguf import only when used

        return save_gguf(model, output, tokenizer=tokenizer, requantize=requantize)
    raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
