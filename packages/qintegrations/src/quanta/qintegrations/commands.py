"""`quanta quantize`, `eval`, `info` and `export`: Transformers model folders on the command
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
from quanta.qintegrations import export, metrics
from quanta.qintegrations.cli import UsageError
from quanta.qintegrations.transformers import QuantaConfig
from quanta.qintegrations.transformers.quantizer import refuse_requantizing
from quanta.qio import CONFIG_KEY, CheckpointError, QuantizationConfig
from quanta.qmodules import ModuleConfig

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
        _, saved, _ = _quanta_config(self.model_dir, [])
        if saved is not None:  # a folder quanta quantized: the same settings, or a refusal
            refuse_requantizing(saved, self.config)


def quantize_folder(request: QuantizeRequest) -> None:
    """Quantize the model in `model_dir` while loading it, calibrate, and save it to `output`."""
    tokenizer = _tokenizer(request.model_dir)
    if request.calibration_text is not None:  # checked before the model is loaded
        text = _read_text(request.calibration_text)
        tokenizer = _required_tokenizer(request.model_dir, tokenizer, "--calibration-text")
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
        bar.update()
        if request.calibration_text is not None:
            bar.set_postfix_str("calibrate")
            _calibrate(model, metrics.lm_token_ids(tokenizer, text, request.calibration_tokens))
            bar.update()
        bar.set_postfix_str("save")
        model.save_pretrained(request.output)
        if tokenizer is not None:
            tokenizer.save_pretrained(request.output)
        bar.update()


def export_folder(model_dir: Path, output: Path, format: str, requantize: bool) -> Path:
    """Load a folder quanta quantized and export it (with its tokenizer) to `output`."""
    _, saved, _ = _quanta_config(model_dir, [])
    if saved is None:
        raise UsageError(
            f"{model_dir} is not quantized with quanta (no quant_method 'quanta' in its "
            "config.json): quantize it first with `quanta quantize`"
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype="auto", local_files_only=True
    ).eval()
    try:
        return export.export(
            model, output, format, tokenizer=_tokenizer(model_dir), requantize=requantize
        )
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def written_files(folder: Path) -> list[str]:
    """The files of an export, one line each with its size (a file export: that file)."""
    files = sorted(folder.iterdir()) if folder.is_dir() else [folder]
    return [f"  {path.name}  {_megabytes(path.stat().st_size)}" for path in files]


def _tokenizer(model_dir: Path) -> object | None:
    """The folder's tokenizer, or None when it ships none (or none that loads)."""
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError):  # what AutoTokenizer raises for a missing tokenizer
        return None


def _required_tokenizer(model_dir: Path, tokenizer: object | None, purpose: str) -> object:
    if tokenizer is None:
        raise UsageError(
            f"{model_dir} has no tokenizer that loads (tokenizer.json, tokenizer_config.json): "
            f"{purpose} needs one (save it next to the model with tokenizer.save_pretrained)"
        )
    return tokenizer


def _calibrate(model: torch.nn.Module, token_ids: torch.Tensor) -> None:
    """Static activation scales from token ids, read in windows."""
    windows = token_ids.split(CALIBRATION_WINDOW)
    with torch.inference_mode(), Calibration(momentum=0.9):
        for window in tqdm(windows, desc="calibrate", unit="window", leave=False):
            model(window[None])


def _read_text(path: Path) -> str:
    text = path.read_text(encoding="utf8", errors="replace")
    if not text.strip():
        raise UsageError(f"{path} holds no text")
    return text


def perplexity_of_folder(model_dir: Path, text_file: Path, tokens: int, window: int) -> float:
    """Perplexity of the model in `model_dir` (quantized or not) on a text file's first tokens."""
    tokenizer = _required_tokenizer(model_dir, _tokenizer(model_dir), "perplexity")
    token_ids = metrics.lm_token_ids(tokenizer, _read_text(text_file), tokens)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype="auto", local_files_only=True
    ).eval()
    windows = math.ceil(token_ids.numel() / window)
    with tqdm(total=windows, desc="perplexity", unit="window", leave=False) as bar:
        counted = _CountingCalls(model, bar.update)
        prefix = metrics.prefix_token_id(tokenizer)
        return metrics.perplexity(counted, token_ids, prefix, window=window)


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
    """What `quanta info` reports about a model folder (either save format)."""

    source: str | None  # where quanta's config was found; None: not quantized with quanta
    settings: dict | None  # the QuantaConfig fields of a save_pretrained folder
    modules: dict[str, ModuleConfig]
    file_bytes: int
    quantized_weight_bytes: int
    quantized_weight_float32_bytes: int

    def lines(self) -> list[str]:
        """The report, line by line."""
        lines = [f"checkpoint files: {_megabytes(self.file_bytes)}"]
        if self.source is None:
            return [*lines, f"not quantized with quanta (no {_NOT_QUANTIZED})"]
        lines.append(f"quanta config: {self.source}")
        if self.settings is not None:
            lines.append(f"quantized with quanta: {_settings(self.settings)}")
        kinds = Counter(_module_kind(entry) for entry in self.modules.values())
        lines.append(f"quantized modules: {len(self.modules)}")
        lines += [f"  {count:5d}  {kind}" for kind, count in sorted(kinds.items())]
        ratio = self.quantized_weight_bytes / max(self.quantized_weight_float32_bytes, 1)
        lines.append(
            f"quantized weights: {_megabytes(self.quantized_weight_bytes)} "
            f"(fp32: {_megabytes(self.quantized_weight_float32_bytes)}, {ratio:.1%})"
        )
        return lines


_NOT_QUANTIZED = f"quant_method 'quanta' in config.json, no {CONFIG_KEY!r} safetensors metadata"


def folder_info(model_dir: Path) -> FolderInfo:
    """Read a folder's config and safetensors headers (no weights are loaded): the folder of
    `save_pretrained` (config.json's quantization_config) or of `quanta.save` (the config in
    the safetensors metadata)."""
    files = sorted(model_dir.glob("*.safetensors"))
    source, settings, config = _quanta_config(model_dir, files)
    try:
        modules = {} if config is None else QuantizationConfig.from_json(config, source).modules
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    quantized_bytes = float32_bytes = 0
    for path in files:
        with safe_open(path, framework="pt") as file:
            for key in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if ".weight." in key:  # codes, scale, zero_point of a quantized weight
                    quantized_bytes += _tensor_bytes(file.get_slice(key))
                module = key.removesuffix(".weight.codes")
                if module != key and module in modules:
                    float32_bytes += _float32_bytes(file.get_slice(key), modules[module])
    file_bytes = sum(path.stat().st_size for path in files)
    return FolderInfo(source, settings, modules, file_bytes, quantized_bytes, float32_bytes)


def _quanta_config(model_dir: Path, files: list[Path]) -> tuple[str | None, dict | None, object]:
    """Where quanta's config is, the QuantaConfig fields (save_pretrained) and the config."""
    config_file = model_dir / "config.json"
    if config_file.is_file():
        quantization = json.loads(config_file.read_text(encoding="utf8")).get("quantization_config")
        if isinstance(quantization, dict) and quantization.get("quant_method") == "quanta":
            return f"{config_file} (save_pretrained)", quantization, quantization.get("modules")
    if files:  # quanta.save writes its config into every file's metadata
        with safe_open(files[0], framework="pt") as file:
            config = (file.metadata() or {}).get(CONFIG_KEY)
        if config is not None:
            return f"{files[0]} metadata (quanta.save)", None, config
    return None, None, None


def _float32_bytes(codes: object, entry: ModuleConfig) -> int:
    """The fp32 size of a weight from its codes: `bits` bits a weight (2/4-bit codes are packed
    along K; a row padded to whole bytes counts its few padding codes too)."""
    return _tensor_bytes(codes) * 8 // entry.weights.bits * FLOAT32_BYTES


def _tensor_bytes(tensor_slice: object) -> int:
    return math.prod(tensor_slice.get_shape()) * SAFETENSORS_ITEMSIZE[tensor_slice.get_dtype()]


def _settings(quantization: dict) -> str:
    keys = ["weights", "activations", "group_size", "modules_to_not_convert", "optimizer"]
    if quantization.get("activations"):
        keys.insert(2, "activations_mode")
    return ", ".join(f"{key}={quantization[key]!r}" for key in keys if quantization.get(key))


def _module_kind(entry: ModuleConfig) -> str:
    kind = f"weights {entry.weights.name if entry.weights else None}"
    if entry.group_size is not None:
        kind += f" group {entry.group_size}"
    if entry.activations is not None:
        kind += f", activations {entry.activations.name} ({entry.activations_mode})"
    return kind


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
