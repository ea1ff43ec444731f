"""compressed-tensors checkpoints (what vLLM and SGLang load natively): export and import.

The folder is a Transformers one whose config.json holds a `quantization_config` with
`quant_method: "compressed-tensors"`, one config group per scheme (weights, input and output
activations), the format each group's compressor writes and `ignore` (the float Linear modules).
Per quantized Linear, as compressed-tensors 0.20's compressors name and lay out its tensors:

- pack-quantized (int weights, float activations): `weight_packed` int32 [N, ceil(K·b/32)]
  (signed codes plus 2**(b-1), element k at bits b·(k % (32/b)) of word k // (32/b)),
  `weight_scale` [N, K/g] (or [N, 1] per channel), `weight_shape` int64 [2] and, when
  asymmetric, `weight_zero_point` int32 (signed zero points packed alike down the columns);
- int-quantized (int weights, quantized activations): `weight` int8 [N, K], the signed codes;
- float-quantized (fp8 weights, quantized activations) and naive-quantized (fp8 weights only):
  `weight` float8_e4m3fn [N, K] and `weight_scale` [N, 1];
- static activations: `input_scale` (and `output_scale`) [1].

The weight is (code - zero_point)·scale in every case, as quanta computes it, so the mapping is
exact: quanta's unsigned b-bit codes q with zero point zp are stored as q - 2**(b-1) and
zp - 2**(b-1). compressed-tensors is never imported here: it is no dependency of quanta.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file
from torch import nn

from quanta.qio import QuantizationConfig, apply_quantization_config
from quanta.qmodules import ModuleConfig, QModuleMixin, QTensor, layout_for
from quanta.qtypes import (
    PACKED_AFFINE,
    SYMMETRIC,
    QType,
    qfloat8_e4m3fn,
    qint2,
    qint4,
    qint8,
)

QUANT_METHOD = "compressed-tensors"
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
# the activation qtypes compressed-tensors has a type for: "int" and "float" (e4m3fn) 8-bit
ACTIVATION_TYPES = {qint8: "int", qfloat8_e4m3fn: "float"}
INTEGER_WEIGHTS = {2: qint2, 4: qint4, 8: qint8}
SCALE_NAMES = ("input_scale", "output_scale")
# quantized modules whose weight is written dequantized: their stored shape is the parameter's
DEQUANTIZED_CLASSES = (nn.Embedding, nn.Conv1d, nn.Conv2d)
# the tensors of a quantized Linear in any compressed-tensors format (its bias is kept as it is)
STORED_NAMES = (
    *("weight", "weight_packed", "weight_scale", "weight_shape", "weight_zero_point"),
    *SCALE_NAMES,
)


@dataclass(frozen=True)
class QuantizationArgs:
    """One `weights`, `input_activations` or `output_activations` entry of a config group."""

    num_bits: int
    type: str  # "int" or "float"
    strategy: str  # "channel", "group" (weights), "tensor" (static), "token" (dynamic)
    symmetric: bool = True
    group_size: int | None = None
    dynamic: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "num_bits": self.num_bits,
            "type": self.type,
            "symmetric": self.symmetric,
            "strategy": self.strategy,
            "group_size": self.group_size,
            "dynamic": self.dynamic,
        }


@dataclass(frozen=True)
class Scheme:
    """A config group's scheme: what one or more Linear modules store."""

    weights: QuantizationArgs
    input_activations: QuantizationArgs | None = None
    output_activations: QuantizationArgs | None = None

    @property
    def format(self) -> str:
        """The compressor compressed-tensors infers for the scheme (its format.py priority)."""
        integer = self.weights.type == "int"
        if self.input_activations is None:
            return "pack-quantized" if integer else "naive-quantized"
        return "int-quantized" if integer else "float-quantized"

    def to_json(self, targets: list[str]) -> dict[str, Any]:
        def args(value: QuantizationArgs | None) -> dict[str, Any] | None:
            return None if value is None else value.to_json()

        return {
            "targets": targets,
            "weights": args(self.weights),
            "input_activations": args(self.input_activations),
            "output_activations": args(self.output_activations),
            "format": self.format,
        }


@dataclass
class ExportedModule:
    """A quantized Linear as the checkpoint stores it: its scheme and its tensors by local name;
    `error`: the relative weight error that requantizing it added (None: written exactly)."""

    scheme: Scheme | None  # None: written float (a dequantized module that is not a Linear)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    error: float | None = None


def save_compressed_tensors(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    tokenizer: object | None = None,
    requantize: bool = False,
) -> Path:
    """Write `model` (a Transformers model quantized and frozen by quanta) as a compressed-tensors
    folder that `AutoModelForCausalLM.from_pretrained` (with compressed-tensors installed) and vLLM
    load; returns the folder.

    int2/int4 weights (with integer zero points), int8 and float8 e4m3fn weights, and int8 or
    float8 e4m3fn activations (dynamic per token, or static) are written exactly. Anything else
    is a ValueError naming the module and the nearest exact option; with `requantize=True` such a
    module is requantized to that option instead and the relative weight error it adds is
    warned. A quantized Embedding is written dequantized (the format quantizes Linear modules
    only), with a warning.
    """
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not hasattr(config, "to_dict"):
        raise TypeError(
            f"model must be a Transformers model (a PreTrainedModel), got {type(model).__name__}"
        )
    output = _empty_folder(output)
    exported = {
        name: _export_module(name, module, requantize)
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin)
        and (module.qconfig.weights is not None or module.qconfig.activations is not None)
    }
    if not any(module.scheme is not None for module in exported.values()):
        raise ValueError(
            "model has no quantized Linear module: quantize and freeze it with quanta first"
        )
    _warn_requantized(exported)
    ignore = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and exported.get(name, ExportedModule(None)).scheme is None
    ]
    output.mkdir(parents=True, exist_ok=True)
    state, tied = _state_dict(model, exported)
    save_torch_state_dict(
        state, output, metadata={"format": "pt"}, shared_tensors_to_discard=tied or None
    )
    _write_config(model, output, _quantization_config(exported, ignore), untie=not tied)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(output)
    if tokenizer is not None:
        tokenizer.save_pretrained(output)
    return output


def _empty_folder(output: str | os.PathLike) -> Path:
    """The output folder: new, or empty (a file quanta did not write is never overwritten)."""
    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a str or os.PathLike, got {type(output).__name__}")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"output {output} exists and is not an empty folder: choose a new one")
    return output


def _export_module(name: str, module: nn.Module, requantize: bool) -> ExportedModule:
    """The scheme and tensors of one quantized module (refusals name the module)."""
    config = module.qconfig
    if config.input_smoothing or config.input_rotation is not None:
        raise ValueError(
            f"module {name!r}: compressed-tensors has no field for quanta's input smoothing or "
            "rotation; nearest exact option: quantize the float model without them"
        )
    if not module.is_frozen and config.weights is not None:
        raise ValueError(
            f"module {name!r} is not frozen (its float weight is quantized at each call): "
            "call quanta.freeze(model) before exporting"
        )
    if not isinstance(module, nn.Linear) or config.weights is None:
        return _float_module(name, module)
    weight = module.stored_weight
    input_args, output_args = _activation_args(name, module)
    problem, nearest = _weight_problem(weight, config)
    error = None
    if problem is not None:
        option = f"{nearest[0].name} weights" + (
            f" with group_size {nearest[1]}" if nearest[1] is not None else ""
        )
        if not requantize:
            raise ValueError(
                f"module {name!r}: {problem}; nearest exact option: {option} (quantize with "
                "it, or pass requantize=True, `quanta export --requantize`, to requantize to it)"
            )
        original = weight.dequantize()
        weight = layout_for(nearest[0]).quantize(original, *nearest)
        error = _relative_error(weight.dequantize(), original)
    writer = _affine_tensors if weight.layout == PACKED_AFFINE else _symmetric_tensors
    weight_args, tensors = writer(weight, packed=input_args is None)
    scheme = Scheme(weight_args, input_args, output_args)
    scales = module.activation_scales() if config.activations_mode == "static" else {}
    tensors.update({key: scale.reshape(1) for key, scale in scales.items()})
    return ExportedModule(scheme, tensors, error)


def _float_module(name: str, module: nn.Module) -> ExportedModule:
    """A quantized module compressed-tensors has no scheme for: the weight of an Embedding or a
    convolution is written dequantized (the same values, in float); anything else is refused."""
    if module.qconfig.activations is None and isinstance(module, DEQUANTIZED_CLASSES):
        return ExportedModule(None, {"weight": module.stored_weight.dequantize()})
    raise ValueError(
        f"module {name!r} ({type(module).__name__}): compressed-tensors quantizes the weights "
        "of Linear modules, and their activations, only; nearest exact option: leave it float "
        "(exclude it when quantizing)"
    )


def _weight_problem(weight: QTensor, config: ModuleConfig) -> tuple[str | None, tuple]:
    """Why the weight has no exact compressed-tensors form (None when it has), and the
    nearest (qtype, group_size) that has one."""
    qtype = weight.qtype
    group_size = config.group_size or qtype.block_size
    if qtype.bits == 8:
        nearest = (qfloat8_e4m3fn if qtype.is_floating_point else qint8, None)
    else:
        nearest = (INTEGER_WEIGHTS.get(qtype.bits, qint4), group_size)
    if qtype.layout == SYMMETRIC and qtype in ACTIVATION_TYPES:
        return None, nearest
    if qtype.layout == SYMMETRIC:
        return f"{qtype} weights have no compressed-tensors type (its float8 is e4m3fn)", nearest
    if qtype.layout != PACKED_AFFINE:
        return f"{qtype} weights have no compressed-tensors field (it holds int and fp8)", nearest
    if config.float_zero_point:
        return (
            f"its float zero points ({config.optimizer_name or 'float'}) have no "
            "compressed-tensors field (zero points are integers there)",
            nearest,
        )
    return None, nearest


def _relative_error(weight: torch.Tensor, original: torch.Tensor) -> float:
    """||weight - original|| / ||original||, in fp32."""
    original = original.float()
    return float((weight.float() - original).norm() / original.norm().clamp(min=1e-30))


def _activation_args(
    name: str, module: nn.Module
) -> tuple[QuantizationArgs | None, QuantizationArgs | None]:
    """The input and output activation args of a module (None: float)."""
    config = module.qconfig
    qtype = config.activations
    if qtype is None:
        return None, None
    if qtype not in ACTIVATION_TYPES:
        raise ValueError(
            f"module {name!r}: {qtype} activations have no compressed-tensors type (its 8-bit "
            "activations are int8 and float8 e4m3fn); nearest exact option: "
            "qfloat8_e4m3fn activations (quantize the float model with them)"
        )
    kind = ACTIVATION_TYPES[qtype]
    if config.activations_mode == "dynamic":
        return QuantizationArgs(8, kind, "token", dynamic=True), None
    static = QuantizationArgs(8, kind, "tensor")
    return static, static if module.quantizes_output else None


def _affine_tensors(weight: QTensor, packed: bool) -> tuple[QuantizationArgs, dict]:
    """int2/int4 codes and integer zero points, signed as compressed-tensors stores them."""
    parts = weight.weight_parts()
    bits = weight.qtype.bits
    offset = 1 << (bits - 1)
    rows, columns = parts.codes.shape
    codes = parts.codes.to(torch.int8) - offset
    zero_point = parts.zero_point.to(torch.int8) - offset
    symmetric = bool((zero_point == 0).all())
    grouped = weight.group_size != columns
    args = QuantizationArgs(
        bits,
        "int",
        "group" if grouped else "channel",
        symmetric,
        weight.group_size if grouped else None,
    )
    tensors = {"weight_scale": parts.scale}
    if packed:
        tensors["weight_packed"] = pack_int32(codes, bits)
        tensors["weight_shape"] = torch.tensor([rows, columns], dtype=torch.int64)
        if not symmetric:  # packed down the columns
            tensors["weight_zero_point"] = pack_int32(zero_point.t(), bits).t().contiguous()
    else:
        tensors["weight"] = codes
        if not symmetric:
            tensors["weight_zero_point"] = zero_point
    return args, tensors


def _symmetric_tensors(weight: QTensor, packed: bool) -> tuple[QuantizationArgs, dict]:
    """int8 or float8 e4m3fn codes with one scale per output channel."""
    parts = weight.weight_parts()
    integer = not weight.qtype.is_floating_point
    args = QuantizationArgs(8, "int" if integer else "float", "channel")
    tensors = {"weight_scale": parts.scale}
    if integer and packed:
        tensors["weight_packed"] = pack_int32(parts.codes, 8)
        tensors["weight_shape"] = torch.tensor(list(parts.codes.shape), dtype=torch.int64)
    else:
        tensors["weight"] = parts.codes
    return args, tensors


def pack_int32(signed: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed b-bit codes [rows, K] (int8) as compressed-tensors' int32 words [rows,
    ceil(K·b/32)]: code + 2**(b-1) at bits b·(k % (32/b)) of word k // (32/b), for b dividing
    32 (written here: only compressed-tensors itself, never a dependency, packs this way)."""
    per_word = 32 // bits
    rows, columns = signed.shape
    values = signed.to(torch.int64) + (1 << (bits - 1))
    values = F.pad(values, (0, -columns % per_word)).reshape(rows, -1, per_word)
    shifts = torch.arange(per_word, dtype=torch.int64, device=signed.device) * bits
    words = (values << shifts).sum(-1)  # disjoint bit fields: their sum is their bitwise or
    return (words - ((words >> 31) << 32)).to(torch.int32)  # bit 31 is int32's sign


def unpack_int32(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """The inverse of `pack_int32`: int32 words [rows, W] into signed int8 codes [rows, K]."""
    per_word = 32 // bits
    words = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per_word, dtype=torch.int64, device=packed.device) * bits
    values = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    values = values.reshape(packed.shape[0], -1)[:, :columns]
    return (values - (1 << (bits - 1))).to(torch.int8)


def _warn_requantized(exported: dict[str, ExportedModule]) -> None:
    """Warn of the modules written dequantized and of those requantized, with the error."""
    dequantized = [name for name, module in exported.items() if module.scheme is None]
    if dequantized:
        warnings.warn(
            f"compressed-tensors quantizes Linear modules only: wrote {', '.join(dequantized)} "
            "dequantized (the same values, in float)",
            stacklevel=3,
        )
    errors = {name: module.error for name, module in exported.items() if module.error is not None}
    if errors:
        worst = max(errors, key=errors.get)
        lines = [f"  {name}: {error:.4%}" for name, error in errors.items()]
        warnings.warn(
            f"requantized {len(errors)} module(s) to the nearest compressed-tensors scheme, "
            f"relative weight error (largest {errors[worst]:.4%}, {worst!r}):\n" + "\n".join(lines),
            stacklevel=3,
        )


def _state_dict(
    model: nn.Module, exported: dict[str, ExportedModule]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every tensor the folder holds, and the tied output embedding key left out (Transformers
    ties it back: tie_word_embeddings), if any."""
    replaced = {f"{name}.{local}" for name in exported for local in ("weight", *SCALE_NAMES)}
    state = {
        key: tensor
        for key, tensor in model.state_dict().items()
        if key not in replaced and key.rpartition(".weight.")[0] not in exported
    }
    for name, module in exported.items():
        state.update({f"{name}.{local}": tensor for local, tensor in module.tensors.items()})
    tied = []
    tie = getattr(model.config, "tie_word_embeddings", False)
    if tie and model.get_output_embeddings() is not None:
        output_key, input_key = (
            _module_name(model, module) + ".weight"
            for module in (model.get_output_embeddings(), model.get_input_embeddings())
        )
        shared = output_key in state and input_key in state
        if shared and state[output_key].data_ptr() == state[input_key].data_ptr():
            tied = [output_key]
    return state, tied


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _quantization_config(exported: dict[str, ExportedModule], ignore: list[str]) -> dict:
    """config.json's quantization_config: one config group per scheme ("Linear" where one
    scheme covers every quantized Linear, else the module names)."""
    groups: dict[Scheme, list[str]] = {}
    for name, module in exported.items():
        if module.scheme is not None:
            groups.setdefault(module.scheme, []).append(name)
    formats = {scheme.format for scheme in groups}
    config_groups = {
        f"group_{index}": scheme.to_json(["Linear"] if len(groups) == 1 else names)
        for index, (scheme, names) in enumerate(groups.items())
    }
    return {
        "quant_method": QUANT_METHOD,
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": None,
    }


def _write_config(model: nn.Module, output: Path, quantization: dict, untie: bool) -> None:
    """config.json: the model's config with the compressed-tensors quantization_config (and
    untied embeddings where the output embedding is stored apart)."""
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["quantization_config"] = quantization
    if untie and config.get("tie_word_embeddings"):
        config["tie_word_embeddings"] = False
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    (output / "config.json").write_text(text + "\n", encoding="utf8")


def load_compressed_tensors(
    model_dir: str | os.PathLike, *, dtype: torch.dtype | None = None
) -> nn.Module:
    """Load a compressed-tensors folder (as llmcompressor or `save_compressed_tensors` writes
    it) into a Transformers causal LM whose quantized Linear modules are quanta's, frozen, with
    exactly the stored codes and scales (nothing is requantized). Schemes quanta has no layout
    for (other bit widths, block or tensor-group strategies, asymmetric int8, activation
    orderings, sparsity, transforms) are a ValueError naming the module or field."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    quantization = _read_quantization_config(model_dir)
    hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    del hf_config.quantization_config
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype or hf_config.dtype)
    stored = _read_tensors(model_dir)
    plans = _import_plans(model, quantization, stored)
    modules = {name: plan.config for name, plan in plans.items()}
    apply_quantization_config(model, QuantizationConfig(modules, {}))
    converted = {f"{name}.{local}" for name in plans for local in STORED_NAMES}
    state = {key: tensor for key, tensor in stored.items() if key not in converted}
    for name, plan in plans.items():
        state.update(plan.quanta_tensors(name, stored))
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"{model_dir}: unexpected tensors {result.unexpected_keys[:5]}")
    model.tie_weights()
    missing = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if missing:
        raise ValueError(f"{model_dir}: missing tensors {missing[:5]}")
    return model.eval()


def _read_quantization_config(model_dir: Path) -> dict:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{model_dir} has no config.json: not a Transformers model folder")
    quantization = json.loads(config_file.read_text(encoding="utf8")).get("quantization_config")
    if not isinstance(quantization, dict) or quantization.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{config_file}: its quantization_config is not {QUANT_METHOD!r}")
    for key in ("sparsity_config", "transform_config", "kv_cache_scheme"):
        if quantization.get(key):
            raise ValueError(
                f"{config_file}: quanta does not read {key} (it holds {quantization[key]!r})"
            )
    return quantization


def _read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf8"))["weight_map"].values()))
    else:
        files = [WEIGHTS_FILE]
    state = {}
    for file in files:
        state.update(load_file(model_dir / file))
    return state


@dataclass(frozen=True)
class ImportPlan:
    """How one compressed-tensors Linear becomes a quanta module: its ModuleConfig and K."""

    config: ModuleConfig
    columns: int

    def quanta_tensors(self, name: str, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The module's tensors under quanta's names (codes, scale, zero_point, scales)."""
        local = {
            key.rpartition(".")[2]: t for key, t in stored.items() if key.rpartition(".")[0] == name
        }
        qtype = self.config.weights
        bits = qtype.bits
        if "weight_packed" in local:
            codes = unpack_int32(local["weight_packed"], bits, self.columns)
        else:
            codes = local["weight"]
        scale = local["weight_scale"]
        tensors = {}
        if qtype.layout == PACKED_AFFINE:
            offset = 1 << (bits - 1)
            zero_point = local.get("weight_zero_point")
            if zero_point is None:
                zero_point = torch.zeros_like(scale, dtype=torch.int8)
            elif "weight_packed" in local:  # pack-quantized packs zero points down the columns
                zero_point = unpack_int32(zero_point.t(), bits, scale.shape[0]).t()
            unsigned = (codes.to(torch.int16) + offset).to(torch.uint8)
            tensors["weight.codes"] = torch.ops.quanta.pack(unsigned.contiguous(), bits)
            tensors["weight.zero_point"] = (
                (zero_point.to(torch.int16) + offset).to(torch.uint8).contiguous()
            )
            tensors["weight.scale"] = scale
        else:
            tensors["weight.codes"] = codes
            tensors["weight.scale"] = scale.reshape(-1, 1).expand(codes.shape[0], 1).contiguous()
        for key in SCALE_NAMES:
            if key in local:
                tensors[key] = local[key].reshape(())
        return {f"{name}.{key}": tensor for key, tensor in tensors.items()}


def _import_plans(
    model: nn.Module, quantization: dict, stored: dict[str, torch.Tensor]
) -> dict[str, ImportPlan]:
    """The ImportPlan of every Linear a config group targets (and `ignore` does not)."""
    ignore = quantization.get("ignore") or []
    groups = list((quantization.get("config_groups") or {}).items())
    plans = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or _matches(name, module, ignore):
            continue
        group = next(
            (scheme for _, scheme in groups if _matches(name, module, scheme["targets"])), None
        )
        if group is None:
            continue
        if f"{name}.weight_g_idx" in stored:
            raise ValueError(
                f"module {name!r}: activation ordering (weight_g_idx) has no quanta layout"
            )
        config = _module_config(name, group, module.in_features)
        plans[name] = ImportPlan(config, module.in_features)
    if not plans:
        raise ValueError("no Linear module of the model is targeted by a config group")
    return plans


def _matches(name: str, module: nn.Module, targets: list[str]) -> bool:
    """compressed-tensors' target matching: a module name, a class name or "re:" + a regex."""
    classes = {klass.__name__ for klass in type(module).__mro__}
    return any(
        re.match(target[3:], name) if target.startswith("re:") else target in (name, *classes)
        for target in targets
    )


def _module_config(name: str, scheme: dict, columns: int) -> ModuleConfig:
    weights = scheme.get("weights")
    if weights is None:
        raise ValueError(f"module {name!r}: activation-only schemes have no quanta layout")
    qtype, group_size = _weight_qtype(name, weights, columns)
    activations, mode, output = _activation_qtype(name, scheme)
    return ModuleConfig(
        weights=qtype,
        group_size=group_size,
        activations=activations,
        activations_mode=mode,
        output_quantized=output,
    )


def _weight_qtype(name: str, weights: dict, columns: int) -> tuple[QType, int | None]:
    bits, kind, strategy = weights.get("num_bits"), weights.get("type"), weights.get("strategy")
    if kind == "int" and bits in (2, 4) and strategy in ("group", "channel"):
        return INTEGER_WEIGHTS[bits], weights.get("group_size") if strategy == "group" else columns
    eight_bit = {"int": qint8, "float": qfloat8_e4m3fn}.get(kind) if bits == 8 else None
    if (
        eight_bit is not None
        and weights.get("symmetric", True)
        and strategy in ("channel", "tensor")
    ):
        return eight_bit, None
    raise ValueError(
        f"module {name!r}: {bits}-bit {kind} weights with strategy {strategy!r} "
        f"(symmetric={weights.get('symmetric')}) have no quanta layout; quanta reads int2/int4 "
        "(group or channel), and symmetric int8 and float8 weights (channel or tensor)"
    )


def _activation_qtype(name: str, scheme: dict) -> tuple[QType | None, str, bool]:
    inputs, outputs = scheme.get("input_activations"), scheme.get("output_activations")
    if inputs is None:
        if outputs is not None:
            raise ValueError(f"module {name!r}: output activations without input activations")
        return None, "static", False
    qtype = {"int": qint8, "float": qfloat8_e4m3fn}.get(inputs.get("type"))
    dynamic = inputs.get("dynamic") is True and inputs.get("strategy") == "token"
    static = inputs.get("dynamic") is False and inputs.get("strategy") == "tensor"
    if (
        qtype is None
        or inputs.get("num_bits") != 8
        or not inputs.get("symmetric", True)
        or not (dynamic or static)
    ):
        raise ValueError(
            f"module {name!r}: input activations {inputs} have no quanta mode; quanta reads "
            "symmetric 8-bit activations, dynamic per token or static per tensor"
        )
    if outputs is not None and (
        dynamic or outputs.get("strategy") != "tensor" or outputs.get("dynamic")
    ):
        raise ValueError(f"module {name!r}: output activations {outputs} have no quanta mode")
    return qtype, "dynamic" if dynamic else "static", outputs is not None
