"""SmolLM2-135M perplexity for every 4-bit weight format, side by side: `python -m bench.formats`.

One run scores, on the demo's data (the first 8,192 Lee corpus tokens in windows of 512; the
tied lm_head and embedding kept float): fp32; quanta int4 (group 64, round-to-nearest and
with AWQ calibrated on held-out Lee tokens), nf4, fp4, mxfp4, nvfp4 and mxfp8; optimum-quanto's
int4 (its default group size, 64 on this model); and, where bitsandbytes is installed, its nf4
(blocksize 64) dequantized into the same model, with the largest logit difference between it
and quanta's nf4. Writes bench/results/formats-<time>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
from datetime import datetime, timezone

import torch
from torch import nn

from bench.linear import RESULTS, machine
from demo import data, models
from quanta.qcalib import awq
from quanta.qintegrations import metrics
from quanta.qmodules import freeze, quantize

GROUP_SIZE = 64  # bitsandbytes' nf4 block and optimum-quanto's group on SmolLM2 (576 columns)
EXCLUDE = ["lm_head", "model.embed_tokens"]  # tied: kept float together, as in the demo
QUANTA_ROWS = ["int4", "int4-awq", "nf4", "fp4", "mxfp4", "nvfp4", "mxfp8"]
CALIBRATION_WINDOWS = 2


def quanta_model(model: nn.Module, weights: str, calibration: list[torch.Tensor]) -> nn.Module:
    qmodel = copy.deepcopy(model)
    qtype = weights.removesuffix("-awq")
    grouped = qtype in ("int4", "nf4", "fp4")
    quantize(qmodel, qtype, exclude=EXCLUDE, group_size=GROUP_SIZE if grouped else None)
    if weights.endswith("-awq"):
        awq(qmodel, calibration, progress=False)
    return freeze(qmodel, progress=False)


@torch.no_grad()
def quanto_model(model: nn.Module) -> nn.Module:
    """`model` with optimum-quanto's int4 weights, dequantized into plain Linears: its own
    modules fail under the inference mode that perplexity runs in (an autograd.Function)."""
    from optimum.quanto import freeze as quanto_freeze
    from optimum.quanto import qint4
    from optimum.quanto import quantize as quanto_quantize

    quantized = copy.deepcopy(model)
    quanto_quantize(quantized, weights=qint4, exclude=EXCLUDE)
    quanto_freeze(quantized)
    plain = copy.deepcopy(model)
    for name, module in quantized.named_modules():
        if hasattr(module, "qweight"):
            plain.get_submodule(name).weight.data = module.qweight.dequantize().float()
    return plain


@torch.no_grad()
def bitsandbytes_model(model: nn.Module) -> nn.Module:
    """`model` with every Linear weight but the excluded ones replaced by bitsandbytes' nf4
    round trip (quantize_4bit / dequantize_4bit on CPU)."""
    import bitsandbytes.functional as bnbf

    qmodel = copy.deepcopy(model)
    for name, module in qmodel.named_modules():
        if isinstance(module, nn.Linear) and name not in EXCLUDE:
            packed, state = bnbf.quantize_4bit(
                module.weight.data, blocksize=GROUP_SIZE, quant_type="nf4"
            )
            module.weight.data = bnbf.dequantize_4bit(packed, state).to(module.weight.dtype)
    return qmodel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, tokenizer = models.load_smollm2()
    held_out = args.tokens + 512 * CALIBRATION_WINDOWS
    ids, after = metrics.lm_token_ids(tokenizer, data.lee_text(), held_out).split(args.tokens)
    bos = torch.tensor([tokenizer.bos_token_id])
    calibration = [torch.cat([bos, window])[None] for window in after.split(512)]
    probe = ids[None, :256]

    candidates = {"fp32": lambda: model}
    candidates |= {
        f"quanta {w}": (lambda w=w: quanta_model(model, w, calibration)) for w in QUANTA_ROWS
    }
    candidates["optimum-quanto int4"] = lambda: quanto_model(model)
    try:
        import bitsandbytes  # noqa: F401

        candidates["bitsandbytes nf4"] = lambda: bitsandbytes_model(model)
    except ImportError:
        print("bitsandbytes is not installed: its row is left out")
    rows, logits = [], {}
    for name, build in candidates.items():
        candidate = build().eval()
        with torch.no_grad():
            logits[name] = candidate(probe).logits.float()
            ppl = metrics.perplexity(candidate, ids, tokenizer.bos_token_id)
        rows.append({"row": name, "perplexity": ppl})
        print(f"{name}: perplexity {ppl:.2f}", flush=True)
    fp32 = logits["fp32"]
    for row in rows:
        row["max_logit_diff_vs_fp32"] = (logits[row["row"]] - fp32).abs().max().item()
    if "bitsandbytes nf4" in logits:
        diff = (logits["quanta nf4"] - logits["bitsandbytes nf4"]).abs().max().item()
        print(f"max |logits quanta nf4 - bitsandbytes nf4| on {probe.shape[1]} tokens: {diff:.3g}")
        rows.append({"row": "quanta nf4 vs bitsandbytes nf4", "max_logit_diff": diff})
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"formats-{stamp}.json").write_text(
        json.dumps({"machine": machine(), "tokens": args.tokens, "rows": rows}, indent=1)
    )
    print("\n| weights | perplexity | max abs logit diff vs fp32 |\n|---|---|---|")
    for row in rows:
        if "perplexity" in row:
            print(
                f"| {row['row']} | {row['perplexity']:.2f} | {row['max_logit_diff_vs_fp32']:.3f} |"
            )


if __name__ == "__main__":
    main()
