"""Plots for the docs from the newest bench/results files: `python -m bench.plots`.

Reads the newest `linear-<time>.jsonl` and `model-<time>.jsonl` (written by `bench.linear` and
`bench.model`: a header line `{"machine": ...}`, then one timing per line) and the newest
`demo-<time>.json` (the demo's table as data), and writes PNGs into docs/img/ together with the
Markdown fragments that the Benchmarks and Accuracy pages include (figures and their captions).
A results file whose machine names a GPU gives a GPU latency plot; without one, the Benchmarks
page says that no GPU results were measured yet.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"
STAMP = re.compile(r"-(\d{8}T\d{6}Z)\.jsonl?$")  # the harness's UTC time in a file name
DPI = 110
LIBRARY_STYLE = {  # library -> (label, color, line style)
    "torch": ("dense (torch)", "black", "--"),
    "quanta": ("quanta", "tab:blue", "-"),
    "quanto": ("optimum-quanto", "tab:orange", "-"),
    "torchao": ("torchao", "tab:green", "-"),
}
WEIGHT_ORDER = ["int8", "int4", "int2", "fp8", "float8", "w8a8"]
WEIGHT_COLORS = {  # demo rows: weight type -> color
    "fp32": "black",
    "int8": "tab:blue",
    "float8": "tab:purple",
    "int4": "tab:orange",
    "int2": "tab:red",
}


def newest(kind: str, suffix: str = ".jsonl") -> Path | None:
    """The results file `<kind>-<time><suffix>` with the latest time in its name, if any."""
    files = [p for p in RESULTS.glob(f"{kind}-*{suffix}") if STAMP.search(p.name)]
    return max(files, key=lambda p: STAMP.search(p.name).group(1), default=None)


def read_jsonl(path: Path) -> tuple[dict, list[dict]]:
    """The machine header and the result rows of a bench .jsonl file."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines[0], [row for row in lines[1:] if row.get("median_ms") is not None]


def is_gpu(header: dict) -> bool:
    """Whether a results file was measured on a GPU (its machine names one)."""
    machine = header.get("machine", {})
    return bool(machine.get("gpu")) or str(machine.get("device", "cpu")).startswith("cuda")


def threads(machine: dict) -> str:
    """The thread count of a run, in words: "1 thread", "2 threads"."""
    count = machine.get("threads", "?")
    return f"{count} thread" + ("" if count == 1 else "s")


def describe(path: Path, header: dict) -> str:
    """One line on where a figure's numbers come from."""
    machine = header.get("machine", {})
    stamp = STAMP.search(path.name).group(1)
    date = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]} UTC"
    where = machine.get("gpu") or machine.get("cpu", "unknown machine")
    load = machine.get("load_average")
    busy = f", load average {load[0]:.1f} at the start" if load else ""
    return (
        f"`bench/results/{path.name}` ({date}): {where}, {threads(machine)}, "
        f"torch {machine.get('torch', '?')}{busy}."
    )


def plot_latency(
    rows: list[dict], tokens_of, title: str, out: Path, tick_labels=None, xlabel: str = "tokens"
) -> None:
    """Median ms against tokens, one panel per weight type, one line per library and dense."""
    weights = sorted(
        {r["weights"] for r in rows if r["weights"] != "dense"},
        key=lambda w: WEIGHT_ORDER.index(w) if w in WEIGHT_ORDER else len(WEIGHT_ORDER),
    )
    dense = sorted((tokens_of(r), r["median_ms"]) for r in rows if r["weights"] == "dense")
    fig, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 3.2), squeeze=False)
    for ax, weight in zip(axes[0], weights, strict=True):
        if dense:
            label, color, style = LIBRARY_STYLE["torch"]
            ax.plot(*zip(*dense, strict=True), style, color=color, marker="o", label=label)
        for library in ("quanta", "quanto", "torchao"):
            points = sorted(
                (tokens_of(r), r["median_ms"])
                for r in rows
                if r["weights"] == weight and r["library"] == library
            )
            if points:
                label, color, style = LIBRARY_STYLE[library]
                ax.plot(*zip(*points, strict=True), style, color=color, marker="o", label=label)
        panel = "int8 weights, int8 activations" if weight == "w8a8" else f"{weight} weights"
        ax.set(xscale="log", yscale="log", title=panel, xlabel=xlabel)
        xs = sorted({tokens_of(r) for r in rows})
        ax.set_xticks(xs, [tick_labels(x) if tick_labels else str(x) for x in xs], fontsize=8)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("median ms (lower is better)")
    max(axes[0], key=lambda ax: len(ax.get_lines())).legend(fontsize=8)  # every library's line
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def linear_figure(path: Path, prefix: str) -> list[str]:
    """Latency of one Linear layer (bench.linear), cold weights, per activation dtype."""
    header, rows = read_jsonl(path)
    rows = [r for r in rows if r.get("cold", True)]
    shapes = {int(r["shape"].split("x")[0]): r["shape"].replace("x", "×") for r in rows}
    lines = []
    for dtype in sorted({r["dtype"] for r in rows}, key=lambda d: d != "bf16"):
        name = f"{prefix}-linear-{dtype}.png"
        plot_latency(
            [r for r in rows if r["dtype"] == dtype],
            lambda r: int(r["shape"].split("x")[0]),
            f"One Linear layer, {dtype} activations, cold weights",
            IMAGES / name,
            tick_labels=lambda tokens: shapes[tokens],
            xlabel="tokens × in × out",
        )
        lines.append(f"![Linear layer latency, {dtype}](img/{name})\n")
    lines.append(
        f"One `Linear` (tokens × in × out), `python -m bench.linear`: {describe(path, header)}\n"
    )
    return lines


def model_figure(path: Path, prefix: str) -> list[str]:
    """Latency of the LLaMA-shaped model (bench.model): decode and prefill, per dtype."""
    header, rows = read_jsonl(path)
    lines = []
    for dtype in sorted({r["dtype"] for r in rows}, key=lambda d: d != "bf16"):
        name = f"{prefix}-model-{dtype}.png"
        plot_latency(
            [r for r in rows if r["dtype"] == dtype],
            lambda r: r["tokens"],
            f"LLaMA-shaped model, one forward pass, {dtype}",
            IMAGES / name,
        )
        lines.append(f"![Model latency, {dtype}](img/{name})\n")
    layers = header.get("args", {}).get("layers")
    built = f"{layers} layers, " if layers else ""
    lines.append(f"`python -m bench.model` ({built}random weights): {describe(path, header)}\n")
    return lines


def benchmarks_fragment() -> str:
    """Plot the newest CPU (and GPU) latency results; the Markdown that shows them."""
    newest_files: dict[tuple[str, str], Path] = {}  # (device, kind) -> newest results file
    for kind in ("model", "linear"):
        for path in RESULTS.glob(f"{kind}-*.jsonl"):
            if STAMP.search(path.name):
                device = "gpu" if is_gpu(read_jsonl(path)[0]) else "cpu"
                best = newest_files.get((device, kind))
                if best is None or STAMP.search(best.name).group(1) < STAMP.search(path.name).group(
                    1
                ):
                    newest_files[(device, kind)] = path
    figures = {"model": model_figure, "linear": linear_figure}
    lines = []
    for device in ("cpu", "gpu"):
        lines.append(f"### {device.upper()}\n")
        found = [
            (kind, newest_files[(device, kind)])
            for kind in figures
            if (device, kind) in newest_files
        ]
        for kind, path in found:
            lines += figures[kind](path, f"latency-{device}")
        if not found:
            lines.append(f"No {device.upper()} results have been measured yet.\n")
    return "\n".join(lines)


def accuracy_fragment() -> str:
    """Plot size against accuracy from the newest demo results; the Markdown that shows them."""
    path = newest("demo", ".json")
    if path is None:
        return "No demo results are recorded yet (`bench/results/demo-<time>.json`).\n"
    record = json.loads(path.read_text())
    models = list(dict.fromkeys(row["model"] for row in record["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = [row for row in record["rows"] if row["model"] == model]
        for row in rows:
            color = WEIGHT_COLORS.get(row["weights"], "tab:gray")
            ax.scatter(row["size_mb"], row["metric"], color=color, label=row["weights"], zorder=3)
        metric = rows[0]["metric_name"]
        better = "lower" if metric == "perplexity" else "higher"
        ax.set(title=model, xlabel="MB in memory", ylabel=f"{metric} ({better} is better)")
        if metric == "perplexity" and max(r["metric"] for r in rows) > 3 * rows[0]["metric_fp32"]:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMAGES / "accuracy.png", dpi=DPI)
    plt.close(fig)
    machine = record.get("machine", {})
    date = record["date"].replace("T", " ").replace("Z", " UTC")
    return (
        "![Size against accuracy](img/accuracy.png)\n\n"
        f"`bench/results/{path.name}` ({date}): {machine.get('cpu', '?')}, {threads(machine)}, "
        f"torch {machine.get('torch', '?')}.\n\n{accuracy_table(record['rows'])}"
    )


def accuracy_table(rows: list[dict]) -> str:
    """The demo's rows as a Markdown table: size against fp32 and accuracy against fp32."""
    lines = [
        "| model | weights | MB in memory | vs fp32 | MB on disk | metric | value | vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["metric_name"] == "perplexity":
            ratio = row["metric"] / row["metric_fp32"]
            versus = f"{100 * (ratio - 1):+.2f}%" if ratio < 2 else f"{ratio:.3g}×"
            value = f"{row['metric']:.2f}" if row["metric"] < 1e5 else f"{row['metric']:.3g}"
        else:
            versus, value = f"{row['metric'] - row['metric_fp32']:+.4f}", f"{row['metric']:.4f}"
        lines.append(
            f"| {row['model']} | {row['weights']} | {row['size_mb']:.1f} "
            f"| {row['size_mb'] / row['size_fp32_mb']:.3f}× | {row['file_mb']:.1f} "
            f"| {row['metric_name']} | {value} | {versus} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Regenerate every figure and fragment under docs/img/."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for stale in IMAGES.glob("latency-*.png"):
        stale.unlink()
    (IMAGES / "benchmarks.md").write_text(benchmarks_fragment())
    (IMAGES / "accuracy.md").write_text(accuracy_fragment())
    for path in sorted(IMAGES.iterdir()):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
