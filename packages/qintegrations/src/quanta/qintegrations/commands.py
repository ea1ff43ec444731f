"""`quanta quantize`, `quanta eval` and `quanta info`: Transformers model folders on the command
line (cli.py parses the arguments; this module holds the work and its heavy imports).

Every model and tokenizer is read from a local folder (`local_files_only`): never from a hub.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from quanta.qcalib import Calibration
from quanta.qintegrations import metrics
from quanta.qintegrations.transformers import QuantaConfig
from quanta.qio import QuantizationConfig

CALIBRATION_WINDOW = 512  # tokens per calibration forward pass, as in the perplexity protocol
FLOAT32_BYTES = 4
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
    "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class QuantizeRequest:
    """What `quanta quantize` was asked to do: its QuantaConfig (checked when it was built) and
    the calibration text that static activation scales need."""

    model_dir: Path
    output: Path
    config: QuantaConfig
    calibration_text: Path | None
    calibration_tokens: int

    def __post_init__(self) -> None:
        defaults = self.config.default_module_config()
        static = defaults.activations is not None and defaults.activations_mode == "static"
        if static and self.calibration_text is None:
            raise ValueError(
                "static activation scales need --calibration-text FILE "
                "(or use --activations-mode dynamic)"
            )
        if self.calibration_text is not None and not static:
            raise ValueError("--calibration-text calibrates static activations: add --activations")


def quantize_folder(request: QuantizeRequest) -> None:
    """Quantize the model in `model_dir` while loading it, calibrate, and save it to `output`."""
    steps = ["load and quantize", "calibrate", "save"]
    if request.calibration_text is None:
        steps.remove("calibrate")
    with tqdm(total=len(steps), desc="quanta quantize", unit="step") as bar:
        bar.set_postfix_str(steps[0])
        model = AutoModelForCausalLM.from_pretrained(
            request.model_dir,
            quantization_config=request.config,
            dtype="auto",
            local_files_only=True,
        ).eval()
        tokenizer = _tokenizer(request.model_dir)
        bar.update()
        if request.calibration_text is not None:
            bar.set_postfix_str("calibrate")
            _calibrate(model, tokenizer, request.calibration_text, request.calibration_tokens)
            bar.update()
        bar.set_postfix_str("save")
        model.save_pretrained(request.output)
        if tokenizer is not None:
            tokenizer.save_pretrained(request.output)
        bar.update()


def _tokenizer(model_dir: Path) -> object | None:
    """The folder's tokenizer, or None when it ships none."""
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError):
        return None


def _calibrate(model: torch.nn.Module, tokenizer: object, text_file: Path, tokens: int) -> None:
    """Static activation scales from the first `tokens` tokens of a text file."""
    if tokenizer is None:
        raise ValueError("--calibration-text needs a tokenizer in the model folder")
    token_ids = metrics.lm_token_ids(tokenizer, _read_text(text_file), tokens)
    windows = token_ids.split(CALIBRATION_WINDOW)
    with torch.inference_mode(), Calibration(momentum=0.9):
        for window in tqdm(windows, desc="calibrate", unit="window", leave=False):
            model(window[None])


def _read_text(path: Path) -> str:
    text = path.read_text(encoding="utf8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path} holds no text")
    return text


def perplexity_of_folder(model_dir: Path, text_file: Path, tokens: int, window: int) -> float:
    """Perplexity of the model in `model_dir` (quantized or not) on a text file's first tokens."""
    tokenizer = _tokenizer(model_dir)
    if tokenizer is None:
        raise ValueError(f"{model_dir} has no tokenizer: perplexity needs one")
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype="auto", local_files_only=True
    ).eval()
    token_ids = metrics.lm_token_ids(tokenizer, _read_text(text_file), tokens)
    windows = math.ceil(token_ids.numel() / window)
    with tqdm(total=windows, desc="perplexity", unit="window", leave=False) as bar:
        counted = _CountingCalls(model, bar.update)
        return metrics.perplexity(counted, token_ids, tokenizer.bos_token_id, window=window)


class _CountingCalls:
    """Calls `model` and then `tick()`: a progress bar for a loop that is not ours."""

    def __init__(self, model: torch.nn.Module, tick: Callable[[], object]) -> None:
        self.model, self.tick = model, tick

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self.model(*args, **kwargs)
        self.tick()
        return output


@dataclass(frozen=True)
class FolderInfo:
    """What `quanta info` reports about a model folder."""

    quantization: dict | None
    file_bytes: int
    quantized_weight_bytes: int
    quantized_weight_float32_bytes: int

    def lines(self) -> list[str]:
        """The report, line by line."""
        lines = [f"checkpoint files: {_megabytes(self.file_bytes)}"]
        if self.quantization is None:
            return [*lines, "not quantized with quanta (no quant_method 'quanta' in config.json)"]
        lines.append(f"quantized with quanta: {_settings(self.quantization)}")
        modules = QuantizationConfig.from_json(self.quantization["modules"]).to_json()["modules"]
        kinds = Counter(_module_kind(entry) for entry in modules.values())
        lines.append(f"quantized modules: {len(modules)}")
        lines += [f"  {count:5d}  {kind}" for kind, count in sorted(kinds.items())]
        ratio = self.quantized_weight_bytes / max(self.quantized_weight_float32_bytes, 1)
        lines.append(
            f"quantized weights: {_megabytes(self.quantized_weight_bytes)} "
            f"(fp32: {_megabytes(self.quantized_weight_float32_bytes)}, {ratio:.1%})"
        )
        return lines


def folder_info(model_dir: Path) -> FolderInfo:
    """Read config.json and the safetensors headers of a model folder (no weights are loaded)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf8"))
    quantization = config.get("quantization_config")
    if not (isinstance(quantization, dict) and quantization.get("quant_method") == "quanta"):
        quantization = None
    files = sorted(model_dir.glob("*.safetensors"))
    quantized_bytes = float32_bytes = 0
    for path in files:
        with safe_open(path, framework="pt") as file:
            for key in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if ".weight." in key:  # codes, scale, zero_point of a quantized weight
                    quantized_bytes += _tensor_bytes(file.get_slice(key))
                elif key.endswith(".weight") and _is_sentinel(file.get_slice(key)):
                    float32_bytes += math.prod(file.get_tensor(key).tolist()) * FLOAT32_BYTES
    return FolderInfo(
        quantization, sum(p.stat().st_size for p in files), quantized_bytes, float32_bytes
    )


def _is_sentinel(tensor_slice: object) -> bool:
    return tensor_slice.get_dtype() == "I64" and len(tensor_slice.get_shape()) == 1


def _tensor_bytes(tensor_slice: object) -> int:
    return math.prod(tensor_slice.get_shape()) * SAFETENSORS_ITEMSIZE[tensor_slice.get_dtype()]


def _settings(quantization: dict) -> str:
    keys = ["weights", "activations", "group_size", "modules_to_not_convert", "optimizer"]
    if quantization.get("activations"):
        keys.insert(2, "activations_mode")
    return ", ".join(f"{key}={quantization[key]!r}" for key in keys if quantization.get(key))


def _module_kind(entry: dict) -> str:
    kind = f"weights {entry['weights']}"
    if entry["group_size"] is not None:
        kind += f" group {entry['group_size']}"
    if entry["activations"] is not None:
        kind += f", activations {entry['activations']} ({entry['activations_mode']})"
    return kind


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
