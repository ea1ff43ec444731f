"""GGUF export for llama.cpp: a Transformers causal LM quantized by quanta as one .gguf file.

Each quantized weight is written in the first GGUF block type that holds its values exactly
(what `gguf`'s reader dequantizes equals quanta's dequantized weight bit for bit):

    int8 (one scale per row)               -> Q8_0
    int2/int4, group size a multiple of 32 -> Q4_0 (codes within zero point -8..+7),
                                              Q4_1 (minimum -zero_point*scale exact in fp16),
                                              Q5_0 (any integer zero point: 5.5 bits a weight)
    mxfp4                                  -> MXFP4 (same e2m1 codes and e8m0 scales)

GGUF keeps block scales in float16, so scales must be exact in it (quantize a float16 or
bfloat16 model). Whatever has no exact type is refused with a ValueError naming the module and
the nearest exact option, or, with `requantize=True`, requantized by `gguf.quants` with a
warning giving the error it adds. Float weights are written as F16 (BF16 for bfloat16 ones),
vectors (norms, biases) as F32. Metadata, tensor names and the q/k row order follow llama.cpp's
converter (convert_hf_to_gguf.py) for the architectures in `ARCHITECTURES`.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quanta.qmodules import (
    QBitsTensor,
    QBytesTensor,
    QMicroscaledTensor,
    QModuleMixin,
    QTensor,
    QWeightTensor,
)
from quanta.qtypes import qint8, qmxfp4

try:
    import gguf
except ImportError as error:  # not a dependency of the layer: only this export needs it
    raise ImportError(
        "GGUF export needs llama.cpp's gguf package: pip install 'gguf>=0.19'"
    ) from error

from quanta.qintegrations.export.gguf_vocab import write_vocab

Q = gguf.GGMLQuantizationType
BLOCK = 32  # weights per block in Q4_0, Q4_1, Q5_0, Q8_0 and MXFP4
GGUF_MAGIC = b"GGUF"
FILE_TYPES = {
    Q.F16: gguf.LlamaFileType.MOSTLY_F16,
    Q.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
    Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
    Q.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0,
    Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    Q.MXFP4: gguf.LlamaFileType.MOSTLY_MXFP4_MOE,
}


@dataclass(frozen=True)
class Architecture:
    """How one Transformers model type is written for llama.cpp."""

    arch: gguf.MODEL_ARCH
    #: llama.cpp's llama rotates interleaved pairs of q/k dimensions, Transformers' halves: the
    #: converter reorders the q/k rows of each head to match
    permute_qk: bool


ARCHITECTURES = {
    "llama": Architecture(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": Architecture(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
}


class NotExact(Exception):
    """A weight that no GGUF type holds exactly; the message names the nearest exact option."""


@dataclass
class Encoded:
    """A tensor as the GGUF file stores it: rows of blocks (uint8) or plain floats."""

    data: np.ndarray
    ggml_type: gguf.GGMLQuantizationType


@dataclass
class Requantized:
    """What `requantize=True` changed, reported in one warning at the end."""

    errors: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def warn(self) -> None:
        if not self.errors and not self.notes:
            return
        lines = list(self.notes)
        if self.errors:
            worst = max(self.errors, key=self.errors.__getitem__)
            mean = sum(self.errors.values()) / len(self.errors)
            lines.append(
                f"{len(self.errors)} weights requantized by gguf.quants: relative error "
                f"{mean:.2e} on average, at most {self.errors[worst]:.2e} ({worst})"
            )
        warnings.warn("GGUF export, requantize=True: " + "; ".join(lines), stacklevel=3)


def save_gguf(
    model: nn.Module, output: str | os.PathLike, *, tokenizer: Any = None, requantize: bool = False
) -> Path:
    """Write `model` (a Transformers causal LM quantized and frozen by quanta) and its tokenizer
    as one GGUF file for llama.cpp at `output`; returns its path.

    `tokenizer`: the model's Transformers tokenizer (None: loaded from the model's local folder,
    `model.name_or_path`). `requantize`: requantize with gguf.quants, with a warning, the
    weights no GGUF type holds exactly, instead of refusing them.
    """
    config = getattr(model, "config", None)
    architecture = ARCHITECTURES.get(getattr(config, "model_type", None))
    if architecture is None:
        raise ValueError(
            f"model: GGUF export supports the model types {sorted(ARCHITECTURES)}, got "
            f"{getattr(config, 'model_type', type(model).__name__)!r}"
        )
    output = _output_path(output)
    tokenizer = tokenizer if tokenizer is not None else _saved_tokenizer(model)
    requantized = Requantized()
    _check_modules(model, requantize, requantized)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[architecture.arch])
    _write_metadata(writer, config)  # checks the config before the weights are encoded
    write_vocab(writer, tokenizer, config.vocab_size)
    tensors = _gguf_tensors(model, architecture, requantize, requantized)
    writer.add_file_type(_file_type(tensors))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, encoded in tensors.items():
        raw_dtype = None if encoded.ggml_type in (Q.F16, Q.F32) else encoded.ggml_type
        writer.add_tensor(name, encoded.data, raw_dtype=raw_dtype)
    _write_atomically(writer, output)
    requantized.warn()
    return output


def _output_path(output: str | os.PathLike) -> Path:
    """The output file, checked: a new path or a GGUF file (never another file replaced)."""
    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a file path, got {type(output).__name__}")
    path = Path(output)
    if path.exists():
        if not path.is_file():
            raise ValueError(f"output {str(path)!r} exists and is not a file")
        with path.open("rb") as file:
            if file.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise ValueError(
                    f"output {str(path)!r} exists and is not a GGUF file: it is not replaced"
                )
    if not path.parent.is_dir():
        raise ValueError(f"output {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    return path


def _saved_tokenizer(model: nn.Module) -> Any:
    """The tokenizer saved beside the model's weights (Transformers' `name_or_path` folder)."""
    folder = getattr(model, "name_or_path", "")
    if folder and Path(folder).is_dir():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"tokenizer: none given and none loads from the model's folder {folder!r} "
                f"({error}); pass tokenizer="
            ) from error
    raise ValueError(
        "tokenizer: llama.cpp needs the model's tokenizer in the GGUF file; pass tokenizer= "
        "(the model has no local folder to load it from)"
    )


def _check_modules(model: nn.Module, requantize: bool, requantized: Requantized) -> None:
    """Refuse what GGUF cannot express for any quantized module, before anything is written."""
    for name, module in model.named_modules():
        if not isinstance(module, QModuleMixin):
            continue
        config = module.qconfig
        if config.input_smoothing or config.input_rotation is not None:
            raise ValueError(
                f"module {name!r} divides or rotates its input (SmoothQuant or Hadamard "
                "rotation): llama.cpp cannot; export a model quantized without smoothing or "
                "rotation"
            )
        if config.weights is not None and not module.is_frozen:
            raise ValueError(
                f"module {name!r} is quantized but not frozen: call quanta.freeze(model) first"
            )
        if config.activations is not None:
            message = (
                f"module {name!r} quantizes its activations ({config.activations}); GGUF holds "
                "weights only (llama.cpp quantizes activations itself): nearest exact option: "
                "quantize with activations=None"
            )
            if not requantize:
                raise ValueError(message + ", or export with requantize=True to drop them")
            requantized.notes.append(f"activation quantization of {name!r} dropped")


def _gguf_tensors(
    model: nn.Module, architecture: Architecture, requantize: bool, requantized: Requantized
) -> dict[str, Encoded]:
    """Every parameter of `model` by its GGUF name, encoded (tied parameters once)."""
    config = model.config
    names = gguf.get_tensor_name_map(architecture.arch, config.num_hidden_layers)
    tensors = {}
    for name, parameter in model.named_parameters():
        kind_and_name = names.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        if kind_and_name is None:
            raise ValueError(
                f"parameter {name!r} has no tensor name in llama.cpp's "
                f"{gguf.MODEL_ARCH_NAMES[architecture.arch]} architecture"
            )
        kind, gguf_name = kind_and_name
        encoded = _encode(name.rpartition(".")[0], parameter.detach(), requantize, requantized)
        if architecture.permute_qk and kind in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K):
            heads = config.num_attention_heads
            if kind == gguf.MODEL_TENSOR.ATTN_K:
                heads = config.num_key_value_heads
            encoded.data = permute_rows(encoded.data, heads)
        tensors[gguf_name] = encoded
    return tensors


def permute_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of each head from Transformers' rotary layout (two halves) to
    llama.cpp's (interleaved pairs), as llama.cpp's converter does; rows may be blocks."""
    shape = rows.shape
    per_head = rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:])
    return np.ascontiguousarray(per_head.swapaxes(1, 2).reshape(shape))


def _encode(
    module: str, tensor: torch.Tensor, requantize: bool, requantized: Requantized
) -> Encoded:
    """One parameter as GGUF stores it: exactly, or requantized when allowed."""
    if not isinstance(tensor, QTensor):
        return _encode_float(tensor)
    try:
        return encode_exact(module, tensor)
    except NotExact as error:
        if not requantize:
            raise ValueError(f"{error}, or export with requantize=True") from None
    reference = tensor.dequantize().float().cpu()
    encoded = _requantized(reference, tensor)
    restored = torch.from_numpy(gguf.quants.dequantize(encoded.data, encoded.ggml_type))
    restored = restored.reshape(reference.shape)
    scale = reference.norm().clamp(min=torch.finfo(torch.float32).tiny)
    requantized.errors[module] = ((restored - reference).norm() / scale).item()
    return encoded


def _encode_float(tensor: torch.Tensor) -> Encoded:
    """A float parameter: vectors as F32, matrices as F16 (BF16 for bfloat16 ones)."""
    values = tensor.float().cpu().numpy()
    if tensor.dim() == 1:
        return Encoded(values, Q.F32)
    if tensor.dtype == torch.bfloat16:
        return Encoded(gguf.quants.quantize(values, Q.BF16), Q.BF16)
    return Encoded(values.astype(np.float16), Q.F16)


def _requantized(reference: torch.Tensor, tensor: QTensor) -> Encoded:
    """The nearest GGUF type for a weight of `tensor`'s qtype, quantized by gguf.quants."""
    values = reference.reshape(reference.shape[0], -1).cpu().numpy()
    if values.shape[1] % BLOCK != 0:  # no block type fits the rows
        return Encoded(values.astype(np.float16), Q.F16)
    qtype = tensor.qtype
    ggml_type = Q.MXFP4 if qtype is qmxfp4 else Q.Q8_0 if qtype.bits == 8 else Q.Q4_1
    return Encoded(gguf.quants.quantize(values, ggml_type), ggml_type)


def encode_exact(module: str, weight: QWeightTensor) -> Encoded:
    """The GGUF blocks that hold `weight`'s values exactly; NotExact naming the nearest exact
    option where none does. (gguf.quants only quantizes floats, choosing its own scales: the
    blocks of given codes and scales are assembled here.)"""
    weight = weight.cpu()
    if isinstance(weight, QBytesTensor) and weight.qtype is qint8:
        return _q8_0(module, weight)
    if isinstance(weight, QBitsTensor):
        return _affine(module, weight)
    if isinstance(weight, QMicroscaledTensor) and weight.qtype is qmxfp4:
        return _mxfp4(module, weight)
    raise NotExact(
        f"module {module!r}: GGUF has no block type for {weight.qtype.name} weights; nearest exact "
        "option: quantize it with qint4 (group_size=32), qint8 or qmxfp4"
    )


def _q8_0(module: str, weight: QBytesTensor) -> Encoded:
    """int8 codes, one scale per row: Q8_0 blocks [fp16 scale, 32 int8 codes]."""
    codes, scale, _ = _parts(weight)
    _check_blocks(module, codes.shape[1], None)
    _check_fp16(module, scale)
    blocks = _blocks(codes)
    scales = _fp16_bytes(_per_block(scale, codes.shape[1]))
    return _rows(codes, [scales, blocks.view(torch.uint8)], Q.Q8_0)


def _affine(module: str, weight: QBitsTensor) -> Encoded:
    """2/4-bit codes with a zero point per group: Q4_0, Q4_1 or Q5_0, the smallest exact one."""
    codes, scale, zero_point = _parts(weight)
    k = codes.shape[1]
    _check_blocks(module, k, weight.group_size)
    _check_fp16(module, scale)
    scales = _fp16_bytes(_per_block(scale, k))
    blocks = _blocks(codes)
    # Q4_1's minimum; exact in float32 (a 4-bit or fp16 zero point times an fp16 scale)
    minimum = -(zero_point.float() * scale.float())
    if zero_point.is_floating_point():
        if not _is_fp16(minimum):
            raise NotExact(
                f"module {module!r}: its float zero points (HQQ) give block minima "
                "-zero_point*scale that float16 does not hold, as Q4_1 needs; nearest exact "
                "option: integer zero points (the default 'minmax' optimizer)"
            )
        return _q4_1(codes, scales, minimum, blocks)
    offsets = blocks.to(torch.int16) - _per_block(zero_point, k).reshape(-1, 1).to(torch.int16)
    low, high = torch.aminmax(offsets)
    if low >= -8 and high <= 7:
        return _rows(codes, [scales, _nibbles(offsets + 8)], Q.Q4_0)
    if _is_fp16(minimum):
        return _q4_1(codes, scales, minimum, blocks)
    q5 = (offsets + 16).to(torch.uint8)  # in [1, 31]: bit 4 goes to the block's high-bit word
    high_bits = (q5 >> 4).reshape(-1, 4, 8) << torch.arange(8, dtype=torch.uint8)
    return _rows(codes, [scales, high_bits.sum(-1, dtype=torch.uint8), _nibbles(q5)], Q.Q5_0)


def _q4_1(
    codes: torch.Tensor, scales: torch.Tensor, minimum: torch.Tensor, blocks: torch.Tensor
) -> Encoded:
    """Q4_1 blocks [fp16 scale, fp16 minimum, 16 bytes of codes]: code * scale + minimum."""
    minima = _fp16_bytes(_per_block(minimum, codes.shape[1]))
    return _rows(codes, [scales, minima, _nibbles(blocks)], Q.Q4_1)


def _mxfp4(module: str, weight: QMicroscaledTensor) -> Encoded:
    """mxfp4: MXFP4 blocks [e8m0 scale byte, 16 bytes of e2m1 codes]; ggml's doubled value
    table with a halved scale gives the same values from the same bytes."""
    parts = weight.inner_tensors()
    codes = torch.ops.quanta.unpack(parts["codes"], 4, weight.in_size)
    exponents = parts["scale"].view(torch.uint8)
    if bool((exponents == 255).any()):
        raise NotExact(
            f"module {module!r}: it has a NaN scale (e8m0 255), which GGUF's MXFP4 reads as "
            "2**127; nearest exact option: quantize finite weights"
        )
    return _rows(codes, [exponents.reshape(-1, 1), _nibbles(_blocks(codes))], Q.MXFP4)


def _parts(weight: QWeightTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Unpacked codes [rows, K], scale and zero point, with K the flattened columns."""
    parts = weight.weight_parts()
    return parts.codes, parts.scale, parts.zero_point


def _check_blocks(module: str, k: int, group_size: int | None) -> None:
    """Refuse rows (or groups, for grouped layouts) that do not split into blocks of 32."""
    if k % BLOCK != 0:
        raise NotExact(
            f"module {module!r}: its {k} columns do not split into GGUF's blocks of {BLOCK} "
            "weights; nearest exact option: leave it float (exclude it from quantize)"
        )
    if group_size is not None and group_size % BLOCK != 0:
        raise NotExact(
            f"module {module!r}: group_size={group_size} does not split into GGUF's blocks of "
            f"{BLOCK} weights; nearest exact option: quantize with group_size={BLOCK} (or a "
            "multiple of it)"
        )


def _check_fp16(module: str, scale: torch.Tensor) -> None:
    """Refuse scales that GGUF's float16 block scales cannot hold."""
    if not _is_fp16(scale):
        raise NotExact(
            f"module {module!r}: its {scale.dtype} scales are not exact in float16, in which "
            "GGUF stores block scales; nearest exact option: quantize with dtype=torch.float16 "
            "(load or cast the model to float16, or bfloat16, before quanta.quantize)"
        )


def _is_fp16(values: torch.Tensor) -> bool:
    """Whether float16 holds every value exactly (NaN stays NaN)."""
    wide = values.float()
    return bool(((wide.half().float() == wide) | wide.isnan()).all())


def _per_block(values: torch.Tensor, k: int) -> torch.Tensor:
    """Per-group values [rows, groups] repeated for each block of 32 columns [rows, K/32]."""
    return values.repeat_interleave(k // BLOCK // values.shape[1], dim=1)


def _blocks(codes: torch.Tensor) -> torch.Tensor:
    """Codes [rows, K] as blocks [rows * K/32, 32]."""
    return codes.reshape(-1, BLOCK)


def _nibbles(blocks: torch.Tensor) -> torch.Tensor:
    """The low 4 bits of codes [n, 32] as ggml packs them: byte j holds those of code j (low
    nibble) and of code j + 16 (high nibble)."""
    low, high = (blocks.to(torch.uint8) & 15).split(BLOCK // 2, dim=1)
    return low | (high << 4)


def _fp16_bytes(values: torch.Tensor) -> torch.Tensor:
    """One float16 per block [n, 2] as little-endian bytes."""
    return values.reshape(-1, 1).to(torch.float16).view(torch.uint8)


def _rows(codes: torch.Tensor, fields: list[torch.Tensor], ggml_type: Q) -> Encoded:
    """Block fields [n, bytes] side by side, as rows of blocks [rows, bytes per row]."""
    blocks = torch.cat(fields, dim=1)
    return Encoded(blocks.reshape(codes.shape[0], -1).numpy(), ggml_type)


def _file_type(tensors: dict[str, Encoded]) -> gguf.LlamaFileType:
    """general.file_type: the type of most matrix weights (it is informational)."""
    counts = Counter(
        encoded.ggml_type for encoded in tensors.values() if encoded.ggml_type != Q.F32
    )
    ggml_type = counts.most_common(1)[0][0] if counts else Q.F16
    return FILE_TYPES[ggml_type]


def _write_metadata(writer: gguf.GGUFWriter, config: Any) -> None:
    """The general.name and <arch>.* hyperparameter keys llama.cpp reads, from the config."""
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"model: llama.cpp's {config.model_type} uses silu, the config says "
                         f"hidden_act={config.hidden_act!r}")  # fmt: skip
    head_dim = getattr(config, "head_dim", None)
    head_dim = head_dim or config.hidden_size // config.num_attention_heads
    writer.add_name(Path(getattr(config, "_name_or_path", "") or config.model_type).name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    _write_rope(writer, config)


def _write_rope(writer: gguf.GGUFWriter, config: Any) -> None:
    """The rotary base and (linear) scaling; other scalings are refused."""
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope_type != "default":
        raise ValueError(
            f"model: rope_type {rope_type!r} is not exported to GGUF; 'default' and 'linear' are"
        )


def _write_atomically(writer: gguf.GGUFWriter, output: Path) -> None:
    """Write the file beside `output` and rename it into place: never a half-written file."""
    staging = output.with_name(f".{output.name}.{uuid.uuid4().hex}.partial")
    try:
        writer.write_header_to_file(staging)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)


__all__ = ["ARCHITECTURES", "save_gguf"]
