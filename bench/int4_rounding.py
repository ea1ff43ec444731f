"""Compare int4 rounding choices (issue 18): quanta's default against optimum-quanto 0.2.7's.

Every Linear weight (lm_head excluded) is replaced by its quantize-dequantize round trip, so
only the rounding differs between rows. Rules compared, per group of `group_size` columns:

- quanta: range [min(x, 0), max(x, 0)], integer zero point (quanta's minmax_affine_params).
- quanto: range [min, max], float shift (optimum-quanto's MaxOptimizer, its default for qint4).
- quanto-intzp: quanto with `zeropoint=True` (its shift rounded to an integer).
- search: quanta's integer zero point, the range shrunk by the factor in SHRINK_FACTORS
  giving each group the least squared error.

Run: python -m bench.int4_rounding random,minilm,smollm2 [tokens]  (weight errors, MiniLM
cosine, SmolLM2 perplexity on the first `tokens` Lee tokens, 8192 by default).
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

import quanta.qkernels  # noqa: F401  (torch.ops.quanta)
from quanta.qtypes import least_error_candidate, minmax_affine_params, qint4

GROUP_SIZES = (32, 64, 128)
SHRINK_FACTORS = [1 - 0.01 * step for step in range(20)]  # 1.00 .. 0.81


def _group_size_for(columns: int, group_size: int) -> int:
    """quanta's fallback when group_size does not divide K: the largest of 64/32 that does."""
    return next(g for g in (group_size, 64, 32, columns) if g <= group_size and columns % g == 0)


def _affine_roundtrip(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g: int):
    groups = x.reshape(x.shape[0], -1, g)
    codes = (groups / scale[..., None]).round() + zero[..., None]
    codes = codes.clamp(0, 15)
    return ((codes - zero[..., None]) * scale[..., None]).reshape(x.shape)


def quanta_rule(x: torch.Tensor, g: int) -> torch.Tensor:
    scale, zero = minmax_affine_params(x, qint4, g)
    codes = torch.ops.quanta.quantize_affine(x, scale, zero, 4, g)
    groups = codes.reshape(x.shape[0], -1, g).float()
    return ((groups - zero[..., None].float()) * scale[..., None]).reshape(x.shape)


def quanto_rule(x: torch.Tensor, g: int, zeropoint: bool = False) -> torch.Tensor:
    from optimum.quanto import MaxOptimizer
    from optimum.quanto import qint4 as quanto_qint4
    from optimum.quanto.tensor.weights.qbits import WeightQBitsTensor

    scale, shift = MaxOptimizer()(x, quanto_qint4, axis=0, group_size=g, zeropoint=zeropoint)
    qx = WeightQBitsTensor.quantize(x, quanto_qint4, 0, g, scale, shift)
    return qx.dequantize()


def search_rule(x: torch.Tensor, g: int) -> torch.Tensor:
    groups = x.reshape(x.shape[0], -1, g)
    low = groups.amin(-1).clamp(max=0)
    high = groups.amax(-1).clamp(min=0)

    def candidate(factor: float):
        scale = ((high - low) * factor / 15).clamp(min=1e-12)
        zero = (-low * factor / scale).round().clamp(0, 15)
        error = (_affine_roundtrip(x, scale, zero, g) - x).reshape(groups.shape).square().sum(-1)
        return (scale, zero), error

    scale, zero = least_error_candidate(map(candidate, SHRINK_FACTORS))
    return _affine_roundtrip(x, scale, zero, g)


RULES = {
    "quanta": quanta_rule,
    "quanto": quanto_rule,
    "quanto-intzp": lambda x, g: quanto_rule(x, g, zeropoint=True),
    "search": search_rule,
}


@torch.no_grad()
def fake_quantized(model: nn.Module, rule, group_size: int) -> dict[str, torch.Tensor]:
    """Replace every Linear weight but lm_head's by its round trip; return the originals."""
    saved = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            weight = module.weight.data
            saved[name] = weight.clone()
            g = _group_size_for(weight.shape[1], group_size)
            module.weight.data = rule(weight.float(), g).to(weight.dtype)
    return saved


@torch.no_grad()
def restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for name, module in model.named_modules():
        if name in saved:
            module.weight.data = saved[name]


def weight_error(model: nn.Module, rule, group_size: int) -> float:
    """Sum of squared round-trip errors over sum of squares of every Linear weight."""
    error = total = 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            w = module.weight.detach().float()
            g = _group_size_for(w.shape[1], group_size)
            error += (rule(w, g) - w).square().sum().item()
            total += w.square().sum().item()
    return error / total


def minilm_rows(group_sizes: tuple[int, ...]) -> None:
    """MiniLM's mean cosine to its fp32 embeddings of 512 Lee sentences, per rule and group size."""
    from demo import data, models
    from quanta.qintegrations import metrics

    minilm, minilm_tok = models.load_minilm()
    sentences = data.lee_sentences(512)
    reference = metrics.sentence_embeddings(minilm, minilm_tok, sentences)
    for g in group_sizes:
        for rule_name, rule in RULES.items():
            saved = fake_quantized(minilm, rule, g)
            cos = metrics.mean_cosine(
                reference, metrics.sentence_embeddings(minilm, minilm_tok, sentences)
            )
            restore(minilm, saved)
            rel = weight_error(minilm, rule, g)
            print(f"MiniLM g{g} {rule_name} cosine {cos:.5f} rel-mse {rel:.6f}", flush=True)


def main(parts: list[str], tokens: int) -> None:
    """`parts`: any of random, minilm, minilm128 (group 128 only), smollm2."""
    from demo import data, models
    from quanta.qintegrations import metrics

    torch.manual_seed(0)
    random_model = nn.Sequential(*(nn.Linear(1024, 1024) for _ in range(4)))
    for g in GROUP_SIZES if "random" in parts else ():
        for rule_name, rule in RULES.items():
            error = weight_error(random_model, rule, g)
            print(f"random uniform g{g} {rule_name} rel-mse {error:.6f}")

    minilm_sizes = GROUP_SIZES if "minilm" in parts else (128,) if "minilm128" in parts else ()
    if minilm_sizes:
        minilm_rows(minilm_sizes)
    if "smollm2" not in parts:
        return
    model, tok = models.load_smollm2()
    ids = metrics.lm_token_ids(tok, data.lee_text(), tokens)
    start = time.perf_counter()
    print(f"SmolLM2 fp32 ppl {metrics.perplexity(model, ids, tok.bos_token_id):.3f}", flush=True)
    print(f"(one perplexity: {time.perf_counter() - start:.0f} s)", flush=True)
    for g in (64, 128, 32):  # the anchors first
        for rule_name, rule in RULES.items():
            if rule_name == "quanto-intzp":  # equal to quanta's on every weight measured before
                continue
            saved = fake_quantized(model, rule, g)
            ppl = metrics.perplexity(model, ids, tok.bos_token_id)
            restore(model, saved)
            print(f"SmolLM2 g{g} {rule_name} ppl {ppl:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(","), int(sys.argv[2]) if len(sys.argv) > 2 else 8192)
