"""Backward pass of a Linear before freeze (QAT, straight-through) and after: float, int8, int4.

Prints the best-of time of `loss.backward()` for each weight type and the int4 / int8 ratio
(issue #3 asks the int4 backward to cost at most 2x the int8 one; optimum-quanto: ~10x).
Run: python bench/bench_qat_backward.py
"""

from __future__ import annotations

import copy
import time

import torch

from quanta.qmodules import freeze, quantize

SHAPES = ((4096, 4096, 16), (4096, 4096, 256), (2048, 8192, 128))  # (in, out, tokens)


def backward_time(module: torch.nn.Module, inputs: torch.Tensor, repeats: int = 10) -> float:
    """Best-of-`repeats` seconds of one backward pass (the forward is not timed)."""
    grad = torch.randn(*inputs.shape[:-1], module.out_features)
    times = []
    for _ in range(repeats + 1):
        output = module(inputs)
        start = time.perf_counter()
        output.backward(grad)
        times.append(time.perf_counter() - start)
        inputs.grad = None
        module.zero_grad(set_to_none=True)
    return min(times[1:])


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for in_features, out_features, tokens in SHAPES:
        torch.manual_seed(0)
        linear = torch.nn.Linear(in_features, out_features)
        inputs = torch.randn(tokens, in_features, requires_grad=True)
        times = {"float": backward_time(linear, inputs)}
        for weights in ("int8", "int4"):
            qat = quantize(copy.deepcopy(linear), weights=weights)
            times[weights] = backward_time(qat, inputs)
            times[f"{weights} frozen"] = backward_time(freeze(qat), inputs)
        row = ", ".join(f"{name} {seconds * 1e3:7.2f} ms" for name, seconds in times.items())
        print(
            f"[{tokens} x {in_features}] -> {out_features}: {row}; "
            f"int4/int8 QAT x{times['int4'] / times['int8']:.2f}, "
            f"frozen x{times['int4 frozen'] / times['int8 frozen']:.2f}"
        )


if __name__ == "__main__":
    main()
