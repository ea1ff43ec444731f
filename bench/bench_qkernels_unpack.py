"""Native CPU quanta::unpack against the pure-PyTorch reference.

Run: python bench/bench_qkernels_unpack.py
"""

from __future__ import annotations

import time

import torch

import quanta.qkernels
from quanta.qkernels import reference


def best_of(fn, *args, repeats: int = 20) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    print(
        f"quanta.qkernels {quanta.qkernels.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for bits in (2, 4):
        for rows, size in ((1, 4096), (4096, 4096), (11008, 4096)):
            packed = torch.randint(0, 256, (rows, (size * bits + 7) // 8), dtype=torch.uint8)
            native = best_of(torch.ops.quanta.unpack, packed, bits, size)
            ref = best_of(reference.unpack, packed, bits, size)
            print(
                f"bits={bits} [{rows}, {size}]: native {native * 1e3:8.3f} ms, "
                f"reference {ref * 1e3:8.3f} ms, x{ref / native:5.1f}"
            )


if __name__ == "__main__":
    main()
