"""One row of `python -m bench.generate`, run in its own process so that its peak RSS is its own.

`prepare` writes what the quanta and llama.cpp rows load (a quanta checkpoint per weight setting,
a GGUF file of quanta's int4 weights); `run_row` loads one row's model, times a warm-up and then
`repeats` greedy generations of the same prompt, and scores perplexity on the given windows.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from quanta.qintegrations import metrics

# llama.cpp's block (Q4_0, Q4_1, Q8_0): SmolLM2's weights come from a Q4_1 file, which int4
# groups of 32 hold exactly; 32 divides every in_features of SmolLM2 and Gemma 3 too
GROUP_SIZE = 32
HEAD = ["lm_head", "model.embed_tokens"]  # tied in both models; quantized only by "-head*" rows
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The compiled rows' inductor options (docs/benchmarks.md): no guards on the model's modules and
# parameters (the model is not changed after compiling; their checks were the largest cost
# outside the graph in a profile of SmolLM2's decode), and the graph's kernels called from C++.
COMPILE_OPTIONS = {
    "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
    "cpp_wrapper": True,
}


@dataclass(frozen=True)
class Row:
    """What a row runs: an engine, its weights and how it decodes."""

    name: str
    engine: str  # "llama.cpp", "transformers" (float weights) or "quanta"
    weights: str  # "fp32", "bf16", "int8", "int4", "nf4" or "gguf"
    # lm_head and the embedding: "" float, "head" quantized as the rest, "head8" int8 (as
    # llama.cpp's SmolLM2 file: Q8_0 for the tied embedding, Q4_1 for the rest)
    head: str = ""
    compiled: bool = False  # torch.compile(fullgraph) of the forward, with a static cache

    @property
    def checkpoint(self) -> str:
        """The name of the prepared quanta checkpoint this row loads."""
        return f"{self.weights}-{self.head}" if self.head else self.weights


@dataclass
class Task:
    """Everything a row process needs, passed as JSON."""

    model: str
    row: str
    threads: int
    dtype: str  # activations (and float weights) of the quanta rows
    prompt_ids: list[int]
    new_tokens: int
    repeats: int
    work_dir: str
    compile_backend: str = "inductor"
    perplexity_ids: list[int] | None = None
    prefix_id: int | None = None
    window: int = 512


@dataclass
class RowResult:
    row: str
    prompt_tokens_per_s: float | None = None
    generated_tokens_per_s: float | None = None
    peak_rss_mb: float | None = None  # from the start below: loading, warm-up, generation
    start_rss_mb: float | None = None  # Python and torch alone, before the engine and model
    perplexity: float | None = None
    load_s: float | None = None
    warmup_s: float | None = None
    generated_ids: list[int] = field(default_factory=list)
    error: str | None = None


def parse_row(name: str) -> Row:
    """ "int4-head8-compiled" -> Row(engine="quanta", weights="int4", head="head8",
    compiled=True)."""
    base, *flags = name.split("-")
    if name.startswith("llama.cpp"):
        return Row(name, "llama.cpp", "gguf" if name == "llama.cpp" else name.split("-", 1)[1])
    engine = "transformers" if base in DTYPES else "quanta"
    head = next((flag for flag in flags if flag.startswith("head")), "")
    return Row(name, engine, base, head=head, compiled="compiled" in flags)


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak) of this process, from /proc (Linux); elsewhere the
    lifetime peak that getrusage reports."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def restart_peak_rss() -> float:
    """Forget the peak RSS so far (importing torch peaks above what it keeps); returns the RSS
    now. Writing 5 to clear_refs resets the peak (Linux 4.0+)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return rss_mb("VmRSS")


# --- models -------------------------------------------------------------------------------


def float_model(spec, dtype: torch.dtype) -> nn.Module:
    """The model in `dtype`: pretrained weights from a folder, else random from its config."""
    from transformers import AutoModelForCausalLM

    if spec.folder is not None:
        return AutoModelForCausalLM.from_pretrained(spec.folder, dtype=dtype).eval()
    torch.manual_seed(0)  # the same random weights in every process
    return AutoModelForCausalLM.from_config(spec.config(), dtype=dtype).eval()


def quantized(model: nn.Module, weights: str, head: str, group_size: int) -> nn.Module:
    """`model` with quantized weights; `head` as Row.head."""
    from quanta.qmodules import freeze, layout_for, quantize
    from quanta.qtypes import to_qtype

    grouped = layout_for(to_qtype(weights)).grouped
    int8_head = {"weights": "int8", "group_size": None}
    quantize(
        model,
        weights,
        exclude=None if head else HEAD,
        group_size=group_size if grouped else None,
        overrides={name: int8_head for name in HEAD} if head == "head8" else None,
    )
    return freeze(model, progress=False)


def prepare(
    spec, checkpoints: list[str], dtype: str, group_size: int, export_gguf: bool, work_dir: Path
) -> dict[str, str]:
    """Write a quanta checkpoint for each name in `checkpoints` ("int4", "int8-head", ...) and,
    with `export_gguf`, quanta's int4 weights as int4.gguf; returns why that GGUF is missing."""
    from quanta.qio import save

    notes = {}
    for name in checkpoints:
        weights, _, head = name.partition("-")
        model = quantized(float_model(spec, DTYPES[dtype]), weights, head, group_size)
        save(model, work_dir / name)
    if not export_gguf:
        return notes
    try:
        from quanta.qintegrations.export.gguf import save_gguf
    except ImportError:
        return {"gguf": "n/a (no exporter)"}
    if spec.tokenizer_folder is None:
        return {"gguf": "n/a (random weights: no tokenizer to write into a GGUF)"}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_folder)
    model = quantized(float_model(spec, torch.float32), "int4", "", group_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # requantize=True warns about what it requantized
            save_gguf(model, work_dir / "int4.gguf", tokenizer=tokenizer, requantize=True)
    except ValueError as error:
        notes["gguf"] = f"n/a (exporter: {str(error).splitlines()[0][:120]})"
    return notes


def quanta_model(spec, row: Row, dtype: torch.dtype, work_dir: Path) -> nn.Module:
    """The prepared checkpoint loaded into a skeleton whose weights were never allocated."""
    from accelerate import init_empty_weights  # parameters on meta, rotary buffers real
    from transformers import AutoModelForCausalLM

    from quanta.qio import load

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(spec.config(), dtype=dtype)
    return load(work_dir / row.checkpoint, skeleton, progress=False).eval()


# --- timing ---------------------------------------------------------------------------------


class TokenTimes:
    """A generate() streamer that records when each batch of token ids arrives (the prompt
    first, then one call per generated token)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ids: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())
        self.ids.extend(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def transformers_generation(model: nn.Module, task: Task, compiled: bool):
    """A function that runs one greedy generation: -> (prompt s, decode s, generated ids)."""
    prompt = torch.tensor([task.prompt_ids])
    options = {"cache_implementation": "static"} if compiled else {}

    def generate() -> tuple[float, float, list[int]]:
        times = TokenTimes()
        start = time.perf_counter()
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=task.new_tokens,
            min_new_tokens=task.new_tokens,
            do_sample=False,
            streamer=times,
            pad_token_id=0,
            **options,
        )
        # times[0]: the prompt echoed; times[1]: the first new token, after the prefill
        new_ids = times.ids[len(task.prompt_ids) :]
        return times.times[1] - start, times.times[-1] - times.times[1], new_ids

    return generate


def llama_cpp_generation(llm, task: Task):
    """The same greedy generation through llama-cpp-python's own generate loop."""

    def generate() -> tuple[float, float, list[int]]:
        llm.reset()  # no prefix reuse: the prompt is evaluated every time
        stamps, new_ids = [], []
        start = time.perf_counter()
        for token in llm.generate(task.prompt_ids, top_k=1, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            new_ids.append(token)
            if len(new_ids) == task.new_tokens:
                break
        return stamps[0] - start, stamps[-1] - stamps[0], new_ids

    return generate


def time_generation(generate, task: Task, result: RowResult) -> None:
    """Warm up once (compilation happens here), then keep the median of `repeats` runs."""
    start = time.perf_counter()
    generate()
    result.warmup_s = time.perf_counter() - start
    runs = sorted((generate() for _ in range(task.repeats)), key=lambda run: run[1])
    prompt_s, decode_s, new_ids = runs[len(runs) // 2]
    result.prompt_tokens_per_s = len(task.prompt_ids) / prompt_s
    result.generated_tokens_per_s = (task.new_tokens - 1) / decode_s if decode_s > 0 else None
    result.generated_ids = new_ids


# --- rows -------------------------------------------------------------------------------------


def llama_cpp_logits(model_path: str, task: Task):
    """A function chunk [1, n] -> logits [1, n, vocab] of llama.cpp, for metrics.perplexity."""
    from llama_cpp import Llama

    llm = Llama(
        model_path,
        n_ctx=task.window + 1,
        n_batch=task.window + 1,
        n_ubatch=task.window + 1,
        n_threads=task.threads,
        n_threads_batch=task.threads,
        logits_all=True,
        verbose=False,
    )

    def logits(chunk: torch.Tensor) -> torch.Tensor:
        llm.reset()
        llm.eval(chunk[0].tolist())
        return torch.from_numpy(llm.scores[: chunk.shape[1]].copy())[None]

    return logits


def run_llama_cpp(spec, row: Row, task: Task, result: RowResult) -> None:
    try:
        from llama_cpp import Llama
    except ImportError:
        result.error = "n/a (llama_cpp is not installed)"
        return
    path = spec.gguf if row.weights == "gguf" and spec.gguf else Path(task.work_dir) / "int4.gguf"
    if not Path(path).is_file():
        result.error = "n/a (no GGUF of this model)"
        return
    start = time.perf_counter()
    llm = Llama(
        str(path),
        n_ctx=len(task.prompt_ids) + task.new_tokens + 8,
        n_batch=512,
        n_threads=task.threads,
        n_threads_batch=task.threads,
        verbose=False,
    )
    result.load_s = time.perf_counter() - start
    time_generation(llama_cpp_generation(llm, task), task, result)
    result.peak_rss_mb = rss_mb("VmHWM")
    del llm
    if task.perplexity_ids is not None:
        score = llama_cpp_logits(str(path), task)
        ids = torch.tensor(task.perplexity_ids)
        result.perplexity = metrics.perplexity(score, ids, task.prefix_id, task.window)


def run_torch(spec, row: Row, task: Task, result: RowResult) -> None:
    torch.set_num_threads(task.threads)
    dtype = DTYPES[row.weights] if row.engine == "transformers" else DTYPES[task.dtype]
    start = time.perf_counter()
    if row.engine == "transformers":
        model = float_model(spec, dtype)
    else:
        model = quanta_model(spec, row, dtype, Path(task.work_dir))
    result.load_s = time.perf_counter() - start
    eager_forward = model.forward
    if row.compiled:
        model.forward = torch.compile(
            model.forward,
            fullgraph=True,
            dynamic=False,
            backend=task.compile_backend,
            options=COMPILE_OPTIONS if task.compile_backend == "inductor" else None,
        )
    with torch.inference_mode():
        time_generation(transformers_generation(model, task, row.compiled), task, result)
    result.peak_rss_mb = rss_mb("VmHWM")
    if task.perplexity_ids is not None and not row.compiled:  # compiled rows share the eager
        model.forward = eager_forward
        ids = torch.tensor(task.perplexity_ids)
        result.perplexity = metrics.perplexity(model, ids, task.prefix_id, task.window)


def run_row(task: Task) -> RowResult:
    from bench.generate_models import MODELS

    spec, row = MODELS[task.model](), parse_row(task.row)
    result = RowResult(task.row, start_rss_mb=restart_peak_rss())
    runner = run_llama_cpp if row.engine == "llama.cpp" else run_torch
    try:
        runner(spec, row, task, result)
    except Exception as error:  # a row that cannot run is a result too
        result.error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return result


def main() -> None:
    """`python -m bench.generate_worker row|prepare < arguments.json`: print the result as JSON."""
    from bench.generate_models import MODELS

    arguments = json.load(sys.stdin)
    with contextlib.redirect_stdout(sys.stderr):  # libraries' prints stay out of the JSON
        if sys.argv[1] == "prepare":
            spec = MODELS[arguments.pop("model")]()
            work_dir = Path(arguments.pop("work_dir"))
            result = prepare(spec, work_dir=work_dir, **arguments)
        else:
            result = asdict(run_row(Task(**arguments)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
