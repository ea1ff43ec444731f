"""What the GPU check's scripts (bench/gpu_*.py, run by bench/gpu.sh) share: arguments, the
environment switches of quanta's CUDA dispatch, the libraries' quantize calls, results files."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

# "torch": the float model and torch's own kernels; optimum-quanto 0.2.7 is the baseline.
LIBRARIES = ("torch", "quanta", "quanto")
# The environment variables quanta's CUDA dispatch reads on every call (docs/ops.md).
DISPATCH_VARIABLES = ("QUANTA_CUDA_KERNELS", "QUANTA_CUDA_PATH")
# Kernel names worth reporting from a profile: quanta's ops and the torch kernels they may call.
KERNEL_PREFIXES = ("quanta", "aten::_weight_int4pack_mm", "aten::_scaled_mm", "aten::_int_mm")
KERNEL_NAMES = ("aten::mm", "aten::addmm", "aten::linear")


def parse_args(description: str, argv: list[str] | None, budget_s: float) -> argparse.Namespace:
    """The arguments every GPU benchmark takes: --smoke, --out, --budget."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on the CPU, no CUDA graphs: a check"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results prefix: writes <out>.jsonl and <out>.md"
    )
    parser.add_argument(
        "--budget", type=float, default=budget_s, help="seconds; later cases are skipped"
    )
    parser.add_argument(
        "--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES, help="what to run"
    )
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("needs a CUDA device (or --smoke for the CPU check)")
    args.device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        torch.set_num_threads(1)  # tiny shapes: threads would only wait on each other
    return args


def card() -> str:
    """The device the numbers come from, as the results record it."""
    if not torch.cuda.is_available():
        return f"CPU (smoke), torch {torch.__version__}"
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (sm_{major}{minor}), torch {torch.__version__}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def dispatch_env(**variables: str) -> Iterator[None]:
    """Set quanta's CUDA dispatch variables (QUANTA_CUDA_KERNELS=...) and unset the others."""
    saved = {name: os.environ.get(name) for name in DISPATCH_VARIABLES}
    for name in DISPATCH_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def quantize_quanta(model: nn.Module, settings: dict, include: str | None = None) -> nn.Module:
    """quanta's ordinary user path: quantize() with `settings`, then freeze()."""
    from quanta.qmodules import freeze, quantize

    quantize(model, include=include, **settings)
    freeze(model)
    return model


def quantize_quanto(model: nn.Module, settings: dict, exclude: str | None = None) -> nn.Module:
    """optimum-quanto's: quantize() with its qtypes named in `settings`, then freeze()."""
    from optimum import quanto

    qtypes = {name: getattr(quanto, value) for name, value in settings.items()}
    quanto.quantize(model, exclude=exclude, **qtypes)
    quanto.freeze(model)
    return model


def kernels_ran(call: Callable[[], object]) -> list[str]:
    """The quanta ops and torch GEMM kernels that one `call()` dispatched to (torch.profiler)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profile:
        call()
    names = {event.name for event in profile.events()}
    return sorted(n for n in names if n.startswith(KERNEL_PREFIXES) or n in KERNEL_NAMES)


def describe_path(op: str, input_shape, weight_shape, dtype: torch.dtype, **options) -> str:
    """The path quanta's CUDA dispatch table picks for a call (its `describe`), or why none."""
    try:
        from quanta.qkernels import cuda_dispatch
    except ImportError:
        return "dispatch not available"
    if not torch.cuda.is_available():
        return "–"
    arch = torch.cuda.get_device_capability()
    try:
        shapes = tuple(input_shape), tuple(weight_shape)
        return cuda_dispatch.describe(op, *shapes, dtype, arch, **options)
    except Exception as error:  # the table refusing a case is worth printing, not a crash
        return f"describe failed: {error_text(error)}"


def error_text(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:160]}"


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.float() - expected).norm() / expected.norm()).item()


class Results:
    """Results written as they come (<out>.jsonl, and the table <out>.md rewritten after each),
    so a stage stopped at its time limit still leaves what it measured."""

    def __init__(self, out: Path | None, table: Callable[[list[dict]], str], budget_s: float):
        self.out, self.table, self.rows = out, table, []
        self.deadline = time.monotonic() + budget_s
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".jsonl").write_text("")

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.out is not None:
            with self.out.with_suffix(".jsonl").open("a") as file:
                file.write(json.dumps(row) + "\n")
            self.out.with_suffix(".md").write_text(self.table(self.rows))
