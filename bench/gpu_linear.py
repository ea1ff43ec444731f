"""The per-Linear table of issue 20 on a GPU: `python -m bench.gpu_linear` (`--smoke`: CPU check).

For each case (weight format, M x K x N) it builds a stack of LAYERS Linear layers of that shape
(bf16, random weights; 24 x 4096 x 14336 is 2.8 GB, far more than the L2 cache, so the weights
stream from HBM as in a model), quantizes a copy with each library and times one call of every
layer on the same input, captured in a CUDA graph and replayed (median µs per Linear). Columns:
bf16 F.linear, optimum-quanto 0.2.7, torch's own kernel (tinygemm, _scaled_mm, _int_mm), quanta's
default path and quanta's native kernels (QUANTA_CUDA_KERNELS=1), the issue's target, and the
path quanta's dispatch table names (`quanta.qkernels.cuda_dispatch.describe`). A graph whose
replay does not rewrite its outputs (a kernel launched outside the capture stream) is reported,
and that cell is timed eagerly instead (marked *).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.gpu_common import (
    Results,
    card,
    describe_path,
    dispatch_env,
    error_text,
    kernels_ran,
    parse_args,
    quantize_quanta,
    quantize_quanto,
    relative_error,
    synchronize,
)

LAYERS = 24
REPLAYS = 20
GROUP_SIZE = 128  # the int4 group size of every library here (optimum-quanto's default)
# A graph replay must reproduce the eager outputs of the same kernels (bitwise, but for
# split-K kernels whose reduction order may vary).
REPLAY_TOLERANCE = 1e-2
# A relative error (layer 0, against fp32) above this is listed under the table: int4 with groups
# of 128 gives about 0.1 on Gaussian weights, 8-bit formats under 0.05.
SUSPECT_ERROR = 0.2
COLUMNS = {
    "bf16": "bf16 F.linear",
    "quanto": "optimum-quanto 0.2.7",
    "torch": "torch native",
    "quanta": "quanta default",
    "quanta_native": "quanta native",
}
QUANTA_COLUMNS = ("quanta", "quanta_native")
LIBRARY = {"bf16": "torch", "torch": "torch", "quanto": "quanto"} | dict.fromkeys(
    QUANTA_COLUMNS, "quanta"
)


# ---- torch's own kernels, from a float weight -------------------------------------------------
Forward = Callable[[torch.Tensor], torch.Tensor]


def tinygemm_int4(weight: torch.Tensor) -> Forward:
    """torch's int4 kernel (tinygemm): asymmetric groups, w = (q - 8) * scale + zero."""
    out_features, in_features = weight.shape
    groups = weight.float().reshape(out_features, in_features // GROUP_SIZE, GROUP_SIZE)
    low = groups.amin(-1)
    scale = ((groups.amax(-1) - low) / 15).clamp(min=1e-6)
    codes = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
    codes = codes.reshape(out_features, in_features)
    zero = low + 8 * scale
    scales_and_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(weight.dtype)
    aten = torch.ops.aten
    if weight.is_cuda:  # two codes a byte, the even column in the high nibble
        nibbles = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        packed = aten._convert_weight_to_int4pack(nibbles, 8)
        return lambda x: aten._weight_int4pack_mm(x, packed, GROUP_SIZE, scales_and_zeros)
    packed = aten._convert_weight_to_int4pack_for_cpu(codes, 8)
    return lambda x: aten._weight_int4pack_mm_for_cpu(x, packed, GROUP_SIZE, scales_and_zeros)


def int_mm_int8(weight: torch.Tensor) -> Forward:
    """torch._int_mm: int8 weights per channel, int8 activations per token (quantized per call)."""
    weight_scale = weight.float().abs().amax(1).clamp(min=1e-12) / 127
    codes_t = (weight.float() / weight_scale[:, None]).round().clamp(-127, 127).to(torch.int8).t()

    def forward(x: torch.Tensor) -> torch.Tensor:
        x_scale = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
        x_codes = (x.float() / x_scale).round().clamp(-127, 127).to(torch.int8)
        return (torch._int_mm(x_codes, codes_t).float() * x_scale * weight_scale).to(x.dtype)

    return forward


def scaled_mm_fp8(weight: torch.Tensor) -> Forward:
    """torch._scaled_mm: e4m3 weights per channel, e4m3 activations per token (per call)."""
    fp8 = torch.float8_e4m3fn
    fp8_max = torch.finfo(fp8).max
    weight_scale = weight.float().abs().amax(1, keepdim=True).clamp(min=1e-12) / fp8_max
    codes_t = (weight.float() / weight_scale).to(fp8).t()
    scale_b = weight_scale.t().contiguous()

    def forward(x: torch.Tensor) -> torch.Tensor:
        x_scale = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-12) / fp8_max
        x_codes = (x.float() / x_scale).to(fp8)
        return torch._scaled_mm(
            x_codes, codes_t, scale_a=x_scale, scale_b=scale_b, out_dtype=x.dtype
        )

    return forward


# ---- the cases of the issue --------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    op: str  # the quanta op its layers call (what describe() is asked about)
    quanta: dict  # quanta.quantize() arguments
    quanto: dict | None  # optimum-quanto's quantize() qtypes; None: it has no such path
    torch_native: Callable[[torch.Tensor], Forward] | None
    describe: dict = field(default_factory=dict)  # describe()'s options for this weight format


INT4 = {"weights": "int4", "group_size": GROUP_SIZE}
FP8 = "float8_e4m3fn"
DYNAMIC = {"activations_mode": "dynamic"}
FORMATS = {
    "W4A16": Format("linear_affine", INT4, {"weights": "qint4"}, tinygemm_int4),
    "W8A16": Format("linear_symmetric", {"weights": "int8"}, {"weights": "qint8"}, None),
    "FP8 weights": Format(
        "linear_symmetric", {"weights": FP8}, {"weights": "qfloat8_e4m3fn"}, None,
        {"code_dtype": torch.float8_e4m3fn},
    ),
    "W8A8 fp8": Format(
        "linear_float8", {"weights": FP8, "activations": FP8, **DYNAMIC}, None, scaled_mm_fp8
    ),
    "W8A8 int8": Format(
        "linear_int8", {"weights": "int8", "activations": "int8", **DYNAMIC},
        {"weights": "qint8", "activations": "qint8"}, int_mm_int8,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    format: str
    tokens: int
    target_us: float | None = None  # µs per Linear
    target_vs_bf16: float | None = None  # or a multiple of bf16 F.linear's time

    def target(self) -> str:
        return f"≤ {self.target_us:g}" if self.target_us else f"≤ {self.target_vs_bf16:g}× bf16"


CASES = [
    Case("W4A16", 1, target_us=12.5),
    Case("W4A16", 16, target_us=14),
    Case("W4A16", 1024, target_vs_bf16=1.1),
    Case("W8A16", 1, target_us=25),
    Case("W8A16", 1024, target_vs_bf16=1.1),
    Case("FP8 weights", 1, target_us=23),
    Case("W8A8 fp8", 1024, target_vs_bf16=0.65),
    Case("W8A8 int8", 1024, target_vs_bf16=0.65),
]
SHAPE = (4096, 14336)  # K x N of the issue (Llama-3-8B's MLP)
SMOKE_SHAPE, SMOKE_LAYERS, SMOKE_MAX_TOKENS = (256, 384), 2, 32


# ---- timing ------------------------------------------------------------------------------------


class ReplayError(RuntimeError):
    """A CUDA graph replay did not reproduce the eager outputs."""


def time_graph(forwards: list[Forward], x: torch.Tensor) -> float:
    """Median µs per layer of a CUDA graph calling every layer once, replayed REPLAYS times."""
    side = torch.cuda.Stream()  # warm-up (lazy kernel layouts, cuBLAS handles) off the capture
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        expected = [forward(x) for forward in forwards]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = [forward(x) for forward in forwards]
    for output in outputs:  # poisoned: a replay that records nothing leaves NaN
        output.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    worst = max(relative_error(o, e.float()) for o, e in zip(outputs, expected, strict=True))
    if not worst <= REPLAY_TOLERANCE:
        raise ReplayError(f"graph replay differs from eager (relative error {worst:.2g})")
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(forwards))
    return statistics.median(times)


def time_eager(forwards: list[Forward], x: torch.Tensor) -> float:
    """Median µs per layer of calling every layer once, without a graph."""
    for forward in forwards:
        forward(x)
    times = []
    for _ in range(REPLAYS if x.is_cuda else 3):
        synchronize(x.device)
        start = time.perf_counter()
        for forward in forwards:
            forward(x)
        synchronize(x.device)
        times.append((time.perf_counter() - start) * 1e6 / len(forwards))
    return statistics.median(times)


def measure(forwards: list[Forward], x: torch.Tensor, expected: torch.Tensor, row: dict) -> None:
    """Time `forwards` into `row`: us, relative_error (layer 0), graph (bool), note."""
    with torch.no_grad():
        row["relative_error"] = relative_error(forwards[0](x), expected)
        row["graph"] = x.is_cuda
        if x.is_cuda:
            try:
                row["us"] = time_graph(forwards, x)
                return
            except Exception as error:  # reported, and the cell timed eagerly instead
                row["graph"], row["note"] = False, error_text(error)
        row["us"] = time_eager(forwards, x)


# ---- one case ----------------------------------------------------------------------------------


def dequantized(output: torch.Tensor) -> torch.Tensor:
    """optimum-quanto's output as a plain tensor: with quantized activations it is quantized too."""
    return output if type(output) is torch.Tensor else output.dequantize()


def build_column(column: str, fmt: Format, stack: nn.ModuleList) -> list[Forward] | None:
    """The layers of one column, or None where that library has no such path."""
    if column == "bf16":
        return list(stack)
    if column == "torch":
        return fmt.torch_native and [fmt.torch_native(layer.weight) for layer in stack]
    if column == "quanto":
        layers = fmt.quanto and quantize_quanto(copy.deepcopy(stack), fmt.quanto)
        return layers and [lambda x, layer=layer: dequantized(layer(x)) for layer in layers]
    return list(quantize_quanta(copy.deepcopy(stack), fmt.quanta))


def run_case(case: Case, args, results: Results) -> None:
    fmt = FORMATS[case.format]
    in_features, out_features = SMOKE_SHAPE if args.smoke else SHAPE
    tokens = min(case.tokens, SMOKE_MAX_TOKENS) if args.smoke else case.tokens
    layers = SMOKE_LAYERS if args.smoke else LAYERS
    torch.manual_seed(0)
    with torch.device(args.device):
        stack = nn.ModuleList(
            nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
            for _ in range(layers)
        ).requires_grad_(False)
        x = torch.randn(tokens, in_features, dtype=torch.bfloat16)
    expected = x.float() @ stack[0].weight.float().t()
    shape = f"{tokens}x{in_features}x{out_features}"
    quanta_layers = None
    for column in COLUMNS:
        row = {"case": case.format, "shape": shape, "column": column, "target": case.target()}
        env = {"QUANTA_CUDA_KERNELS": "1"} if column == "quanta_native" else {}
        try:
            with dispatch_env(**env):
                if LIBRARY[column] not in args.libraries:
                    results.add({**row, "skipped": "not in --libraries"})
                    continue
                if column != "quanta_native":
                    forwards = build_column(column, fmt, stack)
                elif quanta_layers is None:
                    raise RuntimeError("quanta's layers did not build (see quanta default)")
                else:  # the same frozen layers, the other path
                    forwards = quanta_layers
                if forwards is None:
                    continue
                if column == "quanta":
                    quanta_layers = forwards
                if column.startswith("quanta"):
                    add_path(row, forwards[0], x, fmt)
                measure(forwards, x, expected, row)
        except Exception as error:  # a library that cannot run a case is a result too
            row["error"] = error_text(error)
        results.add(row)
        synchronize(args.device)
    del stack, quanta_layers
    if args.device.type == "cuda":
        torch.cuda.empty_cache()


def add_path(row: dict, layer: nn.Module, x: torch.Tensor, fmt: Format) -> None:
    """The path quanta's dispatch table names for a call, and what ran (profiled op names)."""
    weight_shape = (layer.out_features, layer.in_features)
    row["path"] = describe_path(fmt.op, x.shape, weight_shape, x.dtype, **fmt.describe)
    with torch.no_grad():
        row["kernels"] = kernels_ran(lambda: layer(x))


# ---- the table ---------------------------------------------------------------------------------


def cell(row: dict | None) -> str:
    if row is None:
        return "—"
    if "skipped" in row:
        return "not run"
    if "us" not in row:
        return "error"
    return f"{row['us']:.1f}{'*' if row.get('note') else ''}"


def verdict(rows: dict[str, dict], case_target: str) -> str:
    """Met, or the gap in µs, for the faster of quanta's two columns."""
    times = [rows[c]["us"] for c in QUANTA_COLUMNS if "us" in rows.get(c, {})]
    bf16 = rows.get("bf16", {}).get("us")
    if not times:
        return "no quanta number"
    if "bf16" in case_target:
        if bf16 is None:
            return "no bf16 number"
        limit = float(case_target.split("≤ ")[1].split("×")[0]) * bf16
    else:
        limit = float(case_target.split("≤ ")[1])
    best = min(times)
    return "met" if best <= limit else f"gap +{best - limit:.1f} µs ({best / limit:.2f}×)"


def markdown(rows: list[dict]) -> str:
    """The issue's table with this run's numbers, then the notes and errors of its cells."""
    cases: dict[tuple[str, str], dict[str, dict]] = {}
    for row in rows:
        cases.setdefault((row["case"], row["shape"]), {})[row["column"]] = row
    lines = [
        f"Per Linear, µs (median of {REPLAYS} CUDA-graph replays of {LAYERS}-layer stacks, bf16 "
        f"activations; * = timed eagerly: its graph failed; --smoke: {SMOKE_LAYERS} layers on the "
        f"CPU, eager). Card: {card()}.",
        "",
        f"| case (M×K×N) | {' | '.join(COLUMNS.values())} | target | verdict | quanta path "
        "(default / native) |",
        "|---|" + "---|" * (len(COLUMNS) + 3),
    ]
    for (name, shape), by_column in cases.items():
        target = next(iter(by_column.values()))["target"]
        paths = " / ".join(by_column.get(c, {}).get("path", "–") for c in QUANTA_COLUMNS)
        cells = " | ".join(cell(by_column.get(column)) for column in COLUMNS)
        lines.append(
            f"| {name} {shape} | {cells} | {target} | {verdict(by_column, target)} | {paths} |"
        )
    notes = [
        f"- {r['case']} {r['shape']} {COLUMNS[r['column']]}: {r.get('error') or r['note']}"
        for r in rows
        if r.get("error") or r.get("note")
    ]
    ran = [
        f"- {r['case']} {r['shape']} {COLUMNS[r['column']]}: {', '.join(r['kernels']) or '–'}"
        for r in rows
        if "kernels" in r
    ]
    skipped = sorted(
        {f"- not run: {r['skipped']}: {COLUMNS[r['column']]}" for r in rows if "skipped" in r}
    )
    errors = [
        f"- {r['case']} {r['shape']} {COLUMNS[r['column']]}: "
        f"relative error {r['relative_error']:.2g} against fp32"
        for r in rows
        if r.get("relative_error") is not None and not r["relative_error"] < SUSPECT_ERROR
    ]
    ran = ["", "What quanta's layers called (profiler):", "", *ran] if ran else []
    return "\n".join([*lines, "", *notes, *errors, *skipped, *ran, ""])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, budget_s=600)
    results = Results(args.out, markdown, args.budget)
    for case in CASES:
        if results.time_left() > 0:
            run_case(case, args, results)
        else:
            row = {"case": case.format, "shape": f"M={case.tokens}", "column": "bf16"}
            results.add({**row, "target": case.target(), "skipped": "out of time"})
    print(markdown(results.rows))


if __name__ == "__main__":
    main()
