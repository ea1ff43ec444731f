"""Every CUDA path of quanta's linear layers once, at tiny shapes: what bench/gpu.sh runs under
compute-sanitizer (memcheck, racecheck). `python -m bench.gpu_sanitize` (`--smoke`: on the CPU).

For each weight format (every layout quanta has: packed int4/int2 with uint8 or HQQ float zero
points, int8, fp8 e4m3/e5m2, the 4-bit tables, the microscaled formats, int8 and fp8 dynamic
activations), layer dtype (bf16, fp16, fp32), an aligned and an odd shape (with a bias) and M
(1 and 16: decode; 33: prefill), a Linear is quantized and frozen on the CPU, moved to the GPU and
called under each dispatch setting (default; QUANTA_CUDA_KERNELS=1; QUANTA_CUDA_PATH forced to
native, torch and dequantize), and compared with the same layer on the CPU (where that output is
finite). It prints the quanta_cuda ops that ran and those that did not, and exits 1 on a mismatch
or on an error other than a ValueError/NotImplementedError of a forced path (a refusal, listed).
"""

from __future__ import annotations

import copy
import sys
from collections import Counter

import torch
from torch import nn

from bench.gpu_common import dispatch_env, error_text, parse_args, quantize_quanta, relative_error

FORMATS = {
    "int4": {"weights": "int4", "group_size": 32},
    "int4 hqq": {"weights": "int4", "group_size": 32, "optimizer": "hqq"},  # float zero points
    "int2": {"weights": "int2", "group_size": 32},
    "int8": {"weights": "int8"},
    "fp8 e4m3": {"weights": "float8_e4m3fn"},
    "fp8 e5m2": {"weights": "float8_e5m2"},
    "nf4": {"weights": "nf4"},
    "nf4 double": {"weights": "nf4_dq"},
    "fp4": {"weights": "fp4"},
    "mxfp4": {"weights": "mxfp4"},
    "nvfp4": {"weights": "nvfp4"},
    "mxfp8": {"weights": "mxfp8"},
    "w8a8 int8": {"weights": "int8", "activations": "int8", "activations_mode": "dynamic"},
    "w8a8 fp8": {
        "weights": "float8_e4m3fn",
        "activations": "float8_e4m3fn",
        "activations_mode": "dynamic",
    },
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SHAPES = [(256, 128), (160, 72)]  # K x N: aligned, and odd (K a multiple of the 32-groups only)
TOKENS = [1, 16, 33]
SETTINGS = {
    "default": {},
    "kernels=1": {"QUANTA_CUDA_KERNELS": "1"},
    "path=native": {"QUANTA_CUDA_PATH": "native"},
    "path=torch": {"QUANTA_CUDA_PATH": "torch"},
    "path=dequantize": {"QUANTA_CUDA_PATH": "dequantize"},
}
# GPU against CPU, same frozen layer: output rounding (bf16 keeps 8 bits) plus, with dynamic
# activations, an activation code flipped at a rounding boundary now and then.
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2, torch.float32: 1e-3}
REFUSALS = (ValueError, NotImplementedError)  # how a forced path says it cannot run a case
NATIVE_OPS = ("linear_affine", "linear_symmetric", "linear_lut4", "linear_grouped")


def frozen_layer(settings: dict, in_features: int, out_features: int, dtype) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, dtype=dtype).requires_grad_(False)
    return quantize_quanta(nn.Sequential(layer), settings)


def check_format(name: str, args, settings: dict, failures: list[str], notes: Counter) -> None:
    """Call one format's layers on the device under every setting; record what went wrong."""
    dtypes = {"bf16": torch.bfloat16} if args.smoke else DTYPES
    for (dtype_name, dtype), (in_features, out_features) in (
        (d, s) for d in dtypes.items() for s in (SHAPES[:1] if args.smoke else SHAPES)
    ):
        case = f"{name} {dtype_name} {in_features}x{out_features}"
        try:
            layer = frozen_layer(FORMATS[name], in_features, out_features, dtype)
            on_device = copy.deepcopy(layer).to(args.device)
        except Exception as error:
            failures.append(f"{case}: building the layer: {error_text(error)}")
            continue
        for tokens in TOKENS:
            x = torch.randn(tokens, in_features, dtype=dtype)
            with torch.no_grad():
                expected = layer(x).float()
            if not expected.isfinite().all():  # a CPU bug, not this check's: listed, not compared
                notes[f"{case} M={tokens}: the CPU output is not finite"] += 1
                continue
            for setting, env in settings.items():
                where = f"{case} M={tokens} {setting}"
                try:
                    with dispatch_env(**env), torch.no_grad():
                        out = on_device(x.to(args.device)).cpu()
                except Exception as error:  # only a forced path may refuse a case
                    if isinstance(error, REFUSALS) and setting.startswith("path="):
                        notes[f"refused by {setting}: {error_text(error)}"] += 1
                    else:
                        failures.append(f"{where}: {error_text(error)}")
                    continue
                error = relative_error(out, expected)
                if not error <= TOLERANCE[dtype]:  # NaN fails too
                    failures.append(f"{where}: relative error {error:.2g} against the CPU")
            if args.smoke:
                break  # one M is enough to check that the format builds and runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, budget_s=600)
    settings = {"default": {}} if args.smoke else SETTINGS  # on the CPU they change nothing
    failures: list[str] = []
    notes: Counter = Counter()  # refusals of forced paths, CPU references that are not finite
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profile:
        for name in FORMATS:
            check_format(name, args, settings, failures, notes)
            print(f"{name}: checked, {len(failures)} failures so far", flush=True)
    ran = Counter(e.name for e in profile.events() if e.name.startswith("quanta_cuda::"))
    loaded = any(hasattr(torch.ops.quanta_cuda, op) for op in NATIVE_OPS)
    print(f"quanta_cuda ops that ran: {dict(ran) or 'none'}")
    missing = [op for op in NATIVE_OPS if f"quanta_cuda::{op}" not in ran]
    if missing:
        print(f"quanta_cuda ops not exercised: {missing}{'' if loaded else ' (not loaded)'}")
    for note, count in sorted(notes.items()):
        print(f"note ({count}x): {note}")
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{len(failures)} failures, {sum(notes.values())} notes, {len(FORMATS)} formats")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
