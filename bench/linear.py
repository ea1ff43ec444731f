"""One Linear layer quantized by each library, timed side by side: `python -m bench.linear`.

For every shape (tokens x in x out), activation dtype and weight qtype it times quanta
(quantize + freeze), optimum-quanto, torchao and bitsandbytes where installed, and dense torch,
in one run:
weights cold (a buffer larger than the last-level cache is read before each timed call)
and hot (the layer called again and again). It reports the median time, the ratio to dense bf16
and to the best other library, the relative error against an fp32 matmul of the float weight,
and the weight bytes; with cold weights, also the memory floor: the time to read the same bytes
as quanta's weight, cold, on the same threads (quanta's time / floor: 1.0 is all a kernel that
reads its weight once can do). It writes bench/results/linear-<time>.jsonl and a Markdown table
next to it.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
# "w8a8": int8 weights and dynamic (per-token) int8 activations; nf4 / fp4: bitsandbytes' 4-bit
# tables; mxfp4 / nvfp4 / mxfp8: the microscaling formats (their group size is the format's)
WEIGHTS = ["int8", "int4", "int2", "fp8", "w8a8", "nf4", "fp4", "mxfp4", "nvfp4", "mxfp8"]
LIBRARIES = ["quanta", "quanto", "torchao", "bitsandbytes"]
SHAPES = ["1x4096x11008", "512x4096x4096"]
# Group sizes where a qtype has a choice, the same for every library: 128 for the integer formats,
# bitsandbytes' default block size (64) for its tables.
GROUP_SIZES = {"int4": 128, "int2": 128, "nf4": 64, "fp4": 64}


@dataclass
class Result:
    shape: str
    dtype: str
    weights: str  # "dense" for the float layer
    library: str
    cold: bool
    median_ms: float | None = None
    relative_error: float | None = None
    weight_bytes: int | None = None
    error: str | None = None  # why the library could not run this case


# ---- building a layer per library ----------------------------------------------------------


def build_quanta(layer: nn.Module, weights: str) -> nn.Module:
    from quanta.qmodules import freeze, quantize

    if weights == "w8a8":
        quantize(layer, weights="int8", activations="int8", activations_mode="dynamic")
    else:
        quantize(layer, weights=weights, group_size=GROUP_SIZES.get(weights))
    freeze(layer)
    return layer


def build_quanto(layer: nn.Module, weights: str) -> nn.Module:
    from optimum import quanto

    qtypes = {"int8": quanto.qint8, "int4": quanto.qint4, "int2": quanto.qint2}
    qtypes["fp8"] = quanto.qfloat8
    if weights not in qtypes:
        raise NotImplementedError(f"optimum-quanto has no {weights} weights")
    model = nn.Sequential(layer)
    quanto.quantize(model, weights=qtypes[weights])
    quanto.freeze(model)
    return model


def build_torchao(layer: nn.Module, weights: str) -> nn.Module:
    from torchao import quantization as q
    from torchao.quantization.granularity import PerGroup

    if weights == "w8a8":
        config = q.Int8DynamicActivationInt8WeightConfig()
    elif weights == "int8":
        config = q.Int8WeightOnlyConfig()
    elif weights == "fp8":
        config = q.Float8WeightOnlyConfig()
    elif weights in ("int4", "int2"):  # torchao 0.18 has no x86 int4 kernel: its generic intx path
        bits = torch.int4 if weights == "int4" else torch.int2
        granularity = PerGroup(GROUP_SIZES[weights])
        config = q.IntxWeightOnlyConfig(weight_dtype=bits, granularity=granularity)
    else:
        raise NotImplementedError(f"this benchmark runs no {weights} weights of torchao on CPU")
    model = nn.Sequential(layer)
    q.quantize_(model, config)
    return model


def build_bitsandbytes(layer: nn.Linear, weights: str) -> nn.Module:
    import bitsandbytes as bnb

    if weights not in ("nf4", "fp4"):
        raise NotImplementedError(f"bitsandbytes has no {weights} weights on CPU")
    dtype = layer.weight.dtype
    quantized = bnb.nn.Linear4bit(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        compute_dtype=dtype,
        quant_type=weights,
    )
    quantized.weight = bnb.nn.Params4bit(
        layer.weight.data, requires_grad=False, quant_type=weights, blocksize=GROUP_SIZES[weights]
    )
    if layer.bias is not None:
        quantized.bias = nn.Parameter(layer.bias.data, requires_grad=False)
    return quantized.to("cpu")  # moving the Params4bit to a device quantizes it


BUILDERS: dict[str, Callable[[nn.Module, str], nn.Module]] = {
    "quanta": build_quanta,
    "quanto": build_quanto,
    "torchao": build_torchao,
    "bitsandbytes": build_bitsandbytes,
}


# ---- measuring ---------------------------------------------------------------------------


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, summed over the inner tensors of a tensor subclass."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) is not nn.Parameter:
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    if isinstance(tensor, nn.Parameter) and type(tensor.data) is not torch.Tensor:
        return tensor_bytes(tensor.data)
    return tensor.numel() * tensor.element_size()


def module_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(tensor_bytes(t) for t in tensors)


def last_level_cache_bytes() -> int:
    size = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    text = size.read_text().strip() if size.exists() else "32M"
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units.get(text[-1], 1) if text[-1] in units else int(text)


def median_ms(
    layer: nn.Module, x: torch.Tensor, calls: int, flush: torch.Tensor | None = None
) -> float:
    """Median of `calls` timed calls; with `flush`, the cache is flushed before each one."""
    layer(x)
    times = []
    for _ in range(calls):
        if flush is not None:
            # reading more than the last-level cache evicts the weights; a read leaves no dirty
            # lines, whose write-back would slow the next call's reads (issue 5's method)
            flush.sum()
        start = time.perf_counter()
        layer(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def floor_ms(nbytes: int, args) -> float:
    """The cold read of `nbytes` bytes: a float32 sum over a buffer that size (vectorized and
    split over the threads like a kernel, one add per 4 bytes), the cache flushed before each."""
    buffer = torch.ones(max(nbytes // 4, 1))
    return median_ms(lambda x: x.sum(), buffer, args.calls, args.flush)


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.float() - expected).norm() / expected.norm()).item()


def measure(
    build: Callable[[], nn.Module], x: torch.Tensor, expected: torch.Tensor, args, result: Result
) -> Result:
    try:
        layer = build()
        result.weight_bytes = module_bytes(layer)
        with torch.no_grad():  # not inference_mode: optimum-quanto's int2 refuses it
            result.relative_error = relative_error(layer(x), expected)
            flush = args.flush if result.cold else None
            result.median_ms = median_ms(layer, x, args.calls, flush)
    except Exception as error:  # a library that cannot run a case is a result too
        result.error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return result


def layer_factory(
    float_layer: nn.Linear, dtype: torch.dtype, library: str | None = None, weights: str = ""
) -> Callable[[], nn.Module]:
    """A function that builds a fresh copy of the layer in `dtype`, quantized by `library`."""

    def build() -> nn.Module:
        layer = copy.deepcopy(float_layer).to(dtype).requires_grad_(False)
        return layer if library is None else BUILDERS[library](layer, weights)

    return build


def run_case(shape: str, dtype_name: str, args) -> Iterator[Result]:
    tokens, in_features, out_features = map(int, shape.split("x"))
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    float_layer = nn.Linear(in_features, out_features, bias=False)
    x = torch.randn(tokens, in_features, dtype=dtype)
    expected = float_layer(x.float()).detach()

    for cold in args.temperatures:
        dense = Result(shape, dtype_name, "dense", "torch", cold)
        yield measure(layer_factory(float_layer, dtype), x, expected, args, dense)
        for weights, library in itertools.product(args.weights, args.libraries):
            build = layer_factory(float_layer, dtype, library, weights)
            result = Result(shape, dtype_name, weights, library, cold)
            yield measure(build, x, expected, args, result)
            if cold and library == "quanta" and result.weight_bytes:
                floor = Result(shape, dtype_name, weights, "floor", cold)
                floor.weight_bytes = result.weight_bytes
                floor.median_ms = floor_ms(result.weight_bytes, args)
                yield floor


# ---- report ------------------------------------------------------------------------------


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    info = {"cpu": model, "threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        import quanta.qkernels

        info["quanta_cpu_isa"] = quanta.qkernels.cpu_isa()
    except ImportError:
        pass
    info["load_average"] = os.getloadavg()
    return info


def _cell(r: Result | None) -> str:
    if r is None:
        return "–"
    if r.median_ms is None:
        return "n/a"
    return f"{r.median_ms:.2f} ({r.relative_error:.1e})"


def _ratio(r: Result | None, base_ms: float | None) -> str:
    if r is None or r.median_ms is None or not base_ms:
        return "–"
    return f"{r.median_ms / base_ms:.2f}"


def _table_row(index: dict, shape: str, dtype: str, weights: str, cold: bool) -> str:
    def get(library: str, weights: str = weights, dtype: str = dtype) -> Result | None:
        return index.get((shape, dtype, weights, library, cold))

    quanta, quanto, torchao, bnb = (get(name) for name in LIBRARIES)
    floor = get("floor")
    dense_bf16 = get("torch", "dense", "bf16")
    others = [r.median_ms for r in (quanto, torchao, bnb) if r and r.median_ms]
    mb = f"{quanta.weight_bytes / 2**20:.1f}" if quanta and quanta.weight_bytes else "–"
    return (
        f"| {shape} | {dtype} | {weights} | {_cell(quanta)} | {_cell(quanto)} | {_cell(torchao)} "
        f"| {_cell(bnb)} "
        f"| {_cell(get('torch', 'dense'))} | {_ratio(quanta, dense_bf16 and dense_bf16.median_ms)} "
        f"| {_ratio(quanta, min(others) if others else None)} "
        f"| {_ratio(quanta, floor and floor.median_ms)} | {mb} |"
    )


def markdown(results: list[Result], info: dict) -> str:
    """One table per temperature: a row per shape x dtype x weights, a column per library."""
    index = {(r.shape, r.dtype, r.weights, r.library, r.cold): r for r in results}
    lines = [
        f"CPU: {info['cpu']}, {info['threads']} threads, torch {info['torch']}, quanta kernels: "
        f"{info.get('quanta_cpu_isa')}; load average at start {info['load_average']}.",
        "",
    ]
    keys = sorted({(r.shape, r.dtype, r.weights) for r in results if r.weights != "dense"})
    for cold in sorted({r.cold for r in results}, reverse=True):
        lines += [
            f"**Weights {'cold' if cold else 'hot'}**: median ms (relative error against fp32); "
            "ratios of quanta to dense bf16, to the best other library and to the memory floor "
            "(a cold read of quanta's weight bytes; cold tables only); quanta's weight MB.",
            "",
            "| tokens x in x out | act | weights | quanta | optimum-quanto | torchao "
            "| bitsandbytes | dense (act) | quanta / dense bf16 | quanta / best other "
            "| quanta / floor | MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_table_row(index, *key, cold) for key in keys]
        lines.append("")
    failures = sorted({f"{r.library} {r.weights} {r.dtype}: {r.error}" for r in results if r.error})
    if failures:
        lines += ["Cases a library could not run:", ""] + [f"- {f}" for f in failures] + [""]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="tokens x in x out")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--weights", nargs="+", default=WEIGHTS, choices=WEIGHTS)
    parser.add_argument("--libraries", nargs="+", default=LIBRARIES, choices=LIBRARIES)
    parser.add_argument(
        "--temperatures", nargs="+", default=["cold", "hot"], choices=["cold", "hot"]
    )
    parser.add_argument("--calls", type=int, default=20, help="timed calls per case")
    parser.add_argument(
        "--cache-multiple", type=float, default=1.5, help="cold flush size / last-level cache"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="JSONL file (default: results/)")
    args = parser.parse_args(argv)
    args.temperatures = [t == "cold" for t in args.temperatures]
    if args.threads:
        torch.set_num_threads(args.threads)
    flush_bytes = int(args.cache_multiple * last_level_cache_bytes())
    args.flush = (
        torch.zeros(flush_bytes // 4, dtype=torch.int32) if True in args.temperatures else None
    )
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    info = machine()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"linear-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    with out.open("w") as file:
        file.write(
            json.dumps({"machine": info, "args": {"shapes": args.shapes, "calls": args.calls}})
            + "\n"
        )
        for shape in args.shapes:
            for dtype in args.dtypes:
                for result in run_case(shape, dtype, args):
                    results.append(result)
                    file.write(json.dumps(asdict(result)) + "\n")
                    file.flush()
                    print(json.dumps(asdict(result)), flush=True)
    info["load_average_end"] = os.getloadavg()
    table = markdown(results, info) + f"\nLoad average at the end: {info['load_average_end']}.\n"
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
