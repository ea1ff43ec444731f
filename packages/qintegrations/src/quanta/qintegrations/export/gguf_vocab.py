"""The tokenizer keys of a GGUF file (`tokenizer.ggml.*`) from a Transformers tokenizer.

llama.cpp tokenizes text itself, from these keys: the token list and types, the BPE merges,
the special token ids, the chat template, and the name of its pre-tokenizer (the regex that
splits text before BPE). Byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3, Qwen2) are
written; others are refused.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import gguf

# The pre-tokenizer regexes of Transformers' tokenizer.json files that llama.cpp implements, by
# the name llama.cpp knows them under (its llama-vocab.cpp).
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = QWEN2_REGEX.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
SPLIT_REGEXES = {QWEN2_REGEX: "qwen2", LLAMA3_REGEX: "llama-bpe"}
DEFAULT_PRE_TOKENIZER = "default"


def write_vocab(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> None:
    """Add `tokenizer`'s keys to `writer` for a model with `vocab_size` embedding rows."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)  # gguf's SpecialVocab reads the saved files
        spec = _tokenizer_json(Path(folder))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
        tokens, types = token_list(tokenizer, vocab_size)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
        special.add_to_gguf(writer, quiet=True)


def _tokenizer_json(folder: Path) -> dict[str, Any]:
    """The saved tokenizer.json, checked to be byte-level BPE (what llama.cpp calls gpt2)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            "tokenizer: GGUF export needs a fast (tokenizers) tokenizer that saves a "
            "tokenizer.json; this one saved none"
        )
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    byte_level = model.get("type") == "BPE" and decoder.get("type") == "ByteLevel"
    if not byte_level or model.get("byte_fallback"):
        raise ValueError(
            f"tokenizer: only byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3, Qwen2) are "
            f"exported to GGUF; this one is a {model.get('type')} model with a "
            f"{decoder.get('type')} decoder"
        )
    return spec


def token_list(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[gguf.TokenType]]:
    """Every token by id up to `vocab_size`, and its type: added special tokens are CONTROL,
    other added tokens USER_DEFINED, ids without a token (embedding padding) UNUSED."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ValueError(
            f"tokenizer: it has token id {max(by_id)}, past the model's vocab_size {vocab_size}"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        if index not in added:
            types.append(gguf.TokenType.NORMAL)
        else:
            special = added[index].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    return tokens, types


def pre_tokenizer_name(pre_tokenizer: dict[str, Any] | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer; "default" (with a warning) for one
    it does not know."""
    steps = [] if pre_tokenizer is None else pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    kinds = [step.get("type") for step in steps]
    last = steps[-1] if steps else {}
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
        name = SPLIT_REGEXES.get((steps[0].get("pattern") or {}).get("Regex"))
        if name is not None:
            return name
    warnings.warn(
        f"the tokenizer's pre-tokenizer {json.dumps(pre_tokenizer)} is not one whose llama.cpp "
        f"name quanta knows; the GGUF file says {DEFAULT_PRE_TOKENIZER!r}, so llama.cpp may "
        "split text differently from Transformers (token ids given directly are unaffected)",
        stacklevel=3,
    )
    return DEFAULT_PRE_TOKENIZER
