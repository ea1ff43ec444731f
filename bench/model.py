"""A LLaMA-shaped model quantized by each library, timed side by side: `python -m bench.model`.

The model is built from a config (RMSNorm, grouped-query attention through
scaled_dot_product_attention, SiLU-gated MLP; no embedding, no KV cache: the input is a batch of
hidden states), with random weights. For every weight qtype it times a decode step (one token)
and a prefill (many tokens) for quanta, optimum-quanto and torchao where installed, and the dense
model, in one run, and writes bench/results/model-<time>.jsonl and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from torch import nn

from bench.linear import (
    BUILDERS,
    DTYPES,
    LIBRARIES,
    RESULTS,
    WEIGHTS,
    machine,
    median_ms,
    module_bytes,
    relative_error,
)


@dataclass(frozen=True)
class LlamaConfig:
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_layers: int = 4
    num_heads: int = 32
    num_kv_heads: int = 4


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        head_dim = config.hidden_size // config.num_heads
        self.heads, self.kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, head_dim
        self.input_norm = RMSNorm(config.hidden_size)
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_heads * head_dim, config.hidden_size, bias=False)
        self.post_norm = RMSNorm(config.hidden_size)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def heads(proj: nn.Linear, count: int) -> torch.Tensor:
            return proj(x).view(batch, tokens, count, self.head_dim).transpose(1, 2)

        q, k, v = (
            heads(self.q_proj, self.heads),
            heads(self.k_proj, self.kv_heads),
            heads(self.v_proj, self.kv_heads),
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=tokens > 1, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, tokens, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.input_norm(x))
        h = self.post_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def run(args) -> list[dict]:
    torch.manual_seed(0)
    config = LlamaConfig(num_layers=args.layers)
    float_model = LlamaModel(config).requires_grad_(False)
    results = []
    for dtype_name, tokens in itertools.product(args.dtypes, args.tokens):
        dtype = DTYPES[dtype_name]
        x = torch.randn(1, tokens, config.hidden_size, dtype=dtype)
        with torch.no_grad():
            expected = float_model(x.float())
        cases = [("dense", "torch"), *itertools.product(args.weights, args.libraries)]
        for weights, library in cases:
            result = {"dtype": dtype_name, "tokens": tokens, "weights": weights, "library": library}
            try:
                model = copy.deepcopy(float_model).to(dtype)
                if library != "torch":
                    model = BUILDERS[library](model, weights)
                result["weight_bytes"] = module_bytes(model)
                with torch.no_grad():
                    result["relative_error"] = relative_error(model(x), expected)
                    result["median_ms"] = median_ms(model, x, args.calls)
            except Exception as error:  # a library that cannot run a case is a result too
                result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def markdown(results: list[dict], info: dict, config: LlamaConfig) -> str:
    index = {(r["dtype"], r["tokens"], r["weights"], r["library"]): r for r in results}

    def cell(r: dict | None) -> str:
        if r is None or "median_ms" not in r:
            return "n/a" if r else "–"
        return f"{r['median_ms']:.1f} ({r['relative_error']:.1e})"

    lines = [
        f"CPU: {info['cpu']}, {info['threads']} threads, torch {info['torch']}, quanta kernels: "
        f"{info.get('quanta_cpu_isa')}; load average at start {info['load_average']}. "
        f"Model: {asdict(config)}. Median ms of a forward pass (relative error against fp32).",
        "",
        "| act | tokens | weights | quanta | optimum-quanto | torchao | dense (act) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dtype, tokens, weights in sorted(
        {(r["dtype"], r["tokens"], r["weights"]) for r in results}
    ):
        if weights == "dense":
            continue
        row = [cell(index.get((dtype, tokens, weights, lib))) for lib in LIBRARIES]
        dense = cell(index.get((dtype, tokens, "dense", "torch")))
        lines.append(f"| {dtype} | {tokens} | {weights} | {' | '.join(row)} | {dense} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=LlamaConfig.num_layers)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--dtypes", nargs="+", default=["bf16"], choices=list(DTYPES))
    parser.add_argument("--weights", nargs="+", default=WEIGHTS, choices=WEIGHTS)
    parser.add_argument("--libraries", nargs="+", default=LIBRARIES, choices=LIBRARIES)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    results = run(args)
    info["load_average_end"] = os.getloadavg()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"model-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in [{"machine": info}, *results]))
    table = markdown(results, info, LlamaConfig(num_layers=args.layers))
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
