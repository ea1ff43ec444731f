"""A Llama-3-8B-shaped decode on a GPU: `python -m bench.gpu_generate` (`--smoke`: CPU check).

Transformers' LlamaForCausalLM built from Llama-3-8B's config with random weights (bf16; only the
decoder layers are quantized, lm_head stays float), batch 1, a PROMPT-token prompt, NEW_TOKENS
greedy tokens. ms per token is the median interval between successive decode steps (a logits
processor stamps each step after a device synchronize), so the prefill stays out. Cases: eager
`generate` for bf16, quanta int4 and int8, optimum-quanto int4 and int8; and `generate` with a
static cache, which Transformers compiles (torch.compile, mode "reduce-overhead", here fullgraph),
for quanta int4 and bf16. A case that would not fit in --budget is skipped and says so.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

import torch

from bench.gpu_common import (
    Results,
    card,
    error_text,
    parse_args,
    quantize_quanta,
    quantize_quanto,
    synchronize,
)

LLAMA_3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
SMOKE_LLAMA = dict(
    LLAMA_3_8B,
    vocab_size=256,
    hidden_size=128,  # a multiple of the int4 group size
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
PROMPT, NEW_TOKENS = 32, 32
SMOKE_PROMPT, SMOKE_NEW_TOKENS = 8, 4
# quanta quantizes the decoder layers only (the lm_head and the embedding stay float); quanto
# quantizes Linear layers, so excluding lm_head is the same choice.
QUANTA_SETTINGS = {"int4": {"weights": "int4", "group_size": 128}, "int8": {"weights": "int8"}}
QUANTO_SETTINGS = {"int4": {"weights": "qint4"}, "int8": {"weights": "qint8"}}
# What the issue measured on an H100 (eager, ms per token).
ANCHORS = {("bf16", "torch"): 24.6, ("int4", "quanto"): 26.8, ("int8", "quanto"): 54.3}


@dataclass(frozen=True)
class Case:
    weights: str  # "bf16", "int4", "int8"
    library: str  # "torch" (the float model), "quanta", "quanto"
    compiled: bool = False

    def seconds_needed(self) -> float:
        """A generous guess of a case's time (build, warm-up, timing): skipped below it."""
        return 100 if self.compiled else 15


CASES = [
    Case("bf16", "torch"),
    Case("int4", "quanta"),
    Case("int8", "quanta"),
    Case("int4", "quanta", compiled=True),
    Case("bf16", "torch", compiled=True),
    Case("int4", "quanto"),
    Case("int8", "quanto"),
]


class StepClock:
    """A logits processor that stamps every generation step (after a device synchronize)."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return scores

    def ms_per_token(self) -> float:
        steps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return statistics.median(steps) * 1e3


def build_model(case: Case, args):
    import transformers

    config = transformers.LlamaConfig(**(SMOKE_LLAMA if args.smoke else LLAMA_3_8B))
    torch.manual_seed(0)
    with torch.device(args.device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    if case.library == "quanta":
        quantize_quanta(model, QUANTA_SETTINGS[case.weights], include="model.layers.*")
    elif case.library == "quanto":
        quantize_quanto(model, QUANTO_SETTINGS[case.weights], exclude="lm_head")
    return model


def generate_ms_per_token(model, case: Case, args) -> float:
    """Warm up (compiles, for a static cache), then time one generate call."""
    import transformers

    prompt_tokens, new_tokens = (
        (SMOKE_PROMPT, SMOKE_NEW_TOKENS) if args.smoke else (PROMPT, NEW_TOKENS)
    )
    prompt = torch.randint(model.config.vocab_size, (1, prompt_tokens), device=args.device)
    options = dict(
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    if case.compiled:
        options["cache_implementation"] = "static"
        options["compile_config"] = transformers.CompileConfig(fullgraph=True)
    else:
        options["disable_compile"] = True
    clock = StepClock(args.device)
    processors = transformers.LogitsProcessorList([clock])
    with torch.no_grad():  # not inference_mode: optimum-quanto's int4 refuses it
        model.generate(prompt, **options)  # warm-up: the same lengths, so no recompilation
        model.generate(prompt, logits_processor=processors, **options)
    return clock.ms_per_token()


def run_case(case: Case, args) -> dict:
    row = {"weights": case.weights, "library": case.library, "compiled": case.compiled}
    model = None
    try:
        if args.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = build_model(case, args)
        row["ms_per_token"] = generate_ms_per_token(model, case, args)
        if args.device.type == "cuda":
            row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as error:  # a library that cannot run a case is a result too
        row["error"] = error_text(error)
    del model
    if case.compiled:
        torch.compiler.reset()  # its compiled graphs hold the model
    if args.device.type == "cuda":  # the next 16 GB model needs this one's memory
        gc.collect()
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict]) -> str:
    """One row per model: eager and compiled ms per token, the ratio to bf16, the issue's anchor."""
    index = {(r["weights"], r["library"], r["compiled"]): r for r in rows}
    bf16 = index.get(("bf16", "torch", False), {}).get("ms_per_token")

    def cell(row: dict | None) -> str:
        if row is None:
            return "—"
        if "skipped" in row:
            return "not run"
        return f"{row['ms_per_token']:.1f}" if "ms_per_token" in row else "error"

    lines = [
        f"Llama-3-8B-shaped decode (random weights, lm_head float, batch 1, {PROMPT}-token prompt, "
        f"{NEW_TOKENS} new tokens; --smoke: a tiny Llama, fewer tokens), ms per token (median "
        f"step). Card: {card()}.",
        "",
        "| weights | library | eager | static cache + compile | eager / bf16 eager | peak GB "
        "| issue's H100 (eager) |",
        "|---|---|---|---|---|---|---|",
    ]
    for weights, library in dict.fromkeys((r["weights"], r["library"]) for r in rows):
        eager, compiled = (index.get((weights, library, c)) for c in (False, True))
        ms = eager and eager.get("ms_per_token")
        ratio = f"{ms / bf16:.2f}" if ms and bf16 else "–"
        peak = next((f"{r['peak_gb']:.1f}" for r in (eager, compiled) if r and "peak_gb" in r), "–")
        anchor = ANCHORS.get((weights, library), "–")
        lines.append(
            f"| {weights} | {library} | {cell(eager)} | {cell(compiled)} | {ratio} | {peak} "
            f"| {anchor} |"
        )
    errors = [
        f"- {r['weights']} {r['library']}{' compiled' if r['compiled'] else ''}: "
        f"{r.get('error') or 'not run: ' + r['skipped']}"
        for r in rows
        if "error" in r or "skipped" in r
    ]
    return "\n".join([*lines, "", *errors, ""])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, budget_s=600)
    results = Results(args.out, markdown, args.budget)
    for case in CASES:
        if case.library not in args.libraries:
            continue
        if results.time_left() < case.seconds_needed():
            row = {"weights": case.weights, "library": case.library, "compiled": case.compiled}
            results.add({**row, "skipped": f"under {case.seconds_needed()} s left"})
        else:
            results.add(run_case(case, args))
    print(markdown(results.rows))


if __name__ == "__main__":
    main()
