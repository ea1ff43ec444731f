"""Whole-model CPU generation, llama.cpp vs Transformers vs quanta: `python -m bench.generate`.

One run feeds the same prompt token ids to every row, on the same threads: llama.cpp
(llama-cpp-python) on a GGUF file (SmolLM2: the Q4_1 file its package ships, as is;
"llama.cpp-int4": quanta's int4 weights written by quanta's GGUF exporter), Transformers with
fp32 and bf16 weights, and quanta int8 / int4 / nf4 weights (groups of 32) through Transformers'
`generate`, eager (dynamic cache) and "-compiled" (torch.compile(fullgraph) of the forward with
Transformers' static cache); "-head" rows quantize lm_head and the embedding too, "-head8" rows
at int8 (llama.cpp's SmolLM2 file: Q8_0 there, Q4_1 elsewhere). Each row runs
in a fresh process (so peak RSS is its own), warms up once (compilation happens there), then
generates `--repeats` times greedily; it reports prompt and generated tokens/s (median run),
peak RSS, and perplexity on the demo's data (the first Lee corpus tokens in windows of 512,
the same windows for every row; llama.cpp's through token ids and its logits). Writes
bench/results/generate-<time>.jsonl and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.generate_models import MODELS, random_prompt
from bench.generate_worker import DTYPES, GROUP_SIZE, Task, parse_row, run_row
from bench.linear import RESULTS, machine

ROWS = [
    "llama.cpp",
    "llama.cpp-int4",
    "fp32",
    "bf16",
    "int8",
    "int4",
    "nf4",
    "int8-head",
    "int4-head",
    "int4-head8",
    "int8-compiled",
    "int4-compiled",
    "nf4-compiled",
    "int4-head-compiled",
    "int4-head8-compiled",
]
OPTIONAL_ROWS = ["fp32-compiled", "bf16-compiled", "nf4-head", "int8-head-compiled"]
SMOKE_ROWS = ["llama.cpp", "fp32", "int4", "int4-compiled", "int4-head"]
REPO = Path(__file__).resolve().parent.parent


def worker(command: str, arguments: dict, in_process: bool) -> dict:
    """Run `bench.generate_worker <command>` in a fresh Python process (or in this one)."""
    if in_process:
        from bench.generate_worker import prepare

        if command == "row":
            return asdict(run_row(Task(**arguments)))
        arguments = dict(arguments)
        spec = MODELS[arguments.pop("model")]()
        return prepare(spec, work_dir=Path(arguments.pop("work_dir")), **arguments)
    process = subprocess.run(
        [sys.executable, "-m", "bench.generate_worker", command],
        input=json.dumps(arguments),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if process.returncode != 0:
        tail = process.stderr.strip().splitlines()[-1:] or [f"exit status {process.returncode}"]
        return {"row": arguments.get("row"), "error": f"worker failed: {tail[0][:200]}"}
    return json.loads(process.stdout.strip().splitlines()[-1])


def token_ids(args, spec) -> tuple[list[int], list[int] | None, int | None]:
    """The prompt, the perplexity tokens (None: not scored) and the windows' prefix token."""
    if spec.tokenizer_folder is None:  # random weights: random ids; perplexity only to smoke-test
        scored = random_prompt(spec, args.perplexity_tokens) if args.smoke else []
        return random_prompt(spec, args.prompt_tokens), scored or None, 1
    from transformers import AutoTokenizer

    from demo import data
    from quanta.qintegrations import metrics

    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_folder)
    count = max(args.prompt_tokens, args.perplexity_tokens)
    text = metrics.lm_token_ids(tokenizer, data.lee_text(), count).tolist()
    prefix = metrics.prefix_token_id(tokenizer)
    scored = text[: args.perplexity_tokens] or None
    return [prefix, *text[: args.prompt_tokens - 1]], scored, prefix


def run(args) -> tuple[list[dict], dict]:
    spec = MODELS[args.model]()
    prompt, scored, prefix = token_ids(args, spec)
    rows = [parse_row(name) for name in args.rows]
    checkpoints = sorted({row.checkpoint for row in rows if row.engine == "quanta"})
    needs_export = any(row.engine == "llama.cpp" and row.weights != "gguf" for row in rows)
    needs_export |= any(row.engine == "llama.cpp" for row in rows) and spec.gguf is None
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as work_dir:
        notes = worker(
            "prepare",
            {
                "model": spec.name,
                "checkpoints": checkpoints,
                "dtype": args.dtype,
                "group_size": args.group_size,
                "export_gguf": needs_export,
                "work_dir": work_dir,
            },
            args.in_process,
        )
        for row in rows:
            uses_export = row.engine == "llama.cpp" and (row.weights != "gguf" or not spec.gguf)
            if uses_export and "gguf" in notes:
                result = {"row": row.name, "error": notes["gguf"]}
            else:
                task = Task(
                    model=spec.name,
                    row=row.name,
                    threads=args.threads,
                    dtype=args.dtype,
                    prompt_ids=prompt,
                    new_tokens=args.new_tokens,
                    repeats=args.repeats,
                    work_dir=work_dir,
                    compile_backend=args.compile_backend,
                    perplexity_ids=scored,
                    prefix_id=prefix,
                    window=args.window,
                )
                result = worker("row", asdict(task), args.in_process)
            print(json.dumps({k: v for k, v in result.items() if k != "generated_ids"}), flush=True)
            results.append(result)
    share_perplexity(results)
    return results, {"model": spec.name, "prompt_tokens": len(prompt), "scored": len(scored or [])}


def share_perplexity(results: list[dict]) -> None:
    """A compiled row scores what its eager row scored: the same weights."""
    by_name = {r["row"]: r for r in results}
    for result in results:
        eager = by_name.get(result["row"].removesuffix("-compiled"))
        if result.get("perplexity") is None and eager is not None:
            result["perplexity"] = eager.get("perplexity")


def common_prefix(ids: list[int], reference: list[int]) -> int:
    """How many first generated tokens two rows agree on (greedy: equal until the first
    difference)."""
    pairs = zip(ids, reference, strict=False)
    return next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(ids), len(reference)))


def markdown(results: list[dict], info: dict, run_info: dict, args) -> str:
    by_name = {r["row"]: r for r in results}
    reference = by_name.get("bf16", {}).get("generated_tokens_per_s")
    fp32_ids = by_name.get("fp32", {}).get("generated_ids") or []

    def number(value, digits: int = 1) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        f"CPU: {info['cpu']}, {args.threads} threads, torch {info['torch']}, quanta kernels: "
        f"{info.get('quanta_cpu_isa')}, load average at start {info['load_average']}. "
        f"Model {run_info['model']}, prompt {run_info['prompt_tokens']} tokens, "
        f"{args.new_tokens} generated (greedy), quanta activations {args.dtype}, groups of "
        f"{args.group_size}, median of "
        f"{args.repeats} runs after a warm-up; perplexity on {run_info['scored']} tokens in "
        f"windows of {args.window}.",
        "",
        "| row | prompt tok/s | generated tok/s | × bf16 | peak RSS MB (Python+torch) | perplexity "
        "| same tokens as fp32 | load s | warm-up s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("error"):
            lines.append(f"| {r['row']} | {r['error']} | | | | | | | |")
            continue
        speed = r.get("generated_tokens_per_s")
        ratio = speed / reference if speed and reference else None
        ids = r.get("generated_ids") or []
        agreement = f"{common_prefix(ids, fp32_ids)}/{len(ids)}" if fp32_ids else "–"
        lines.append(
            f"| {r['row']} | {number(r.get('prompt_tokens_per_s'))} | {number(speed)} "
            f"| {number(ratio, 2)} | {number(r.get('peak_rss_mb'), 0)} "
            f"({number(r.get('start_rss_mb'), 0)}) "
            f"| {number(r.get('perplexity'), 2)} | {agreement} | {number(r.get('load_s'))} "
            f"| {number(r.get('warmup_s'))} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=[m for m in MODELS if m != "tiny"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS + OPTIONAL_ROWS)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="quanta rows")
    parser.add_argument("--group-size", type=int, default=GROUP_SIZE, help="int4 and nf4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--perplexity-tokens", type=int, default=8192, help="0: no perplexity")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the files go")
    parser.add_argument("--in-process", action="store_true", help="no process per row (no RSS)")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny random Llama, few tokens: checks the harness"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.prompt_tokens, args.new_tokens, args.repeats = "tiny", 16, 8, 1
        args.perplexity_tokens, args.window, args.compile_backend = 64, 32, "eager"
        if args.rows == ROWS:
            args.rows = SMOKE_ROWS
    if args.new_tokens < 2 or args.prompt_tokens < 1:
        parser.error("--new-tokens must be at least 2 and --prompt-tokens at least 1")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    info = machine()
    results, run_info = run(args)
    info["load_average_end"] = os.getloadavg()
    table = markdown(results, info, run_info, args)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"generate-{args.model}-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    records = [{"machine": info, "run": run_info, "args": settings}, *results]
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    out.with_suffix(".md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
