"""quanta.qkernels: the ``torch.ops.quanta.*`` op library.

Importing this package registers every op of docs/ops.md: the schemas and native kernels of the
compiled ``_C`` library (and ``_C_cuda`` with a CUDA build of torch), then a pure-PyTorch reference
implementation of each op that runs on every device, and a fake kernel for torch.compile / export.
"""

from __future__ import annotations

import importlib.util

import torch

__version__ = "0.2.0"

#: Every op of the library, as ``torch.ops.quanta.<name>``.
OPS = (
    "quantize_symmetric",
    "dequantize_symmetric",
    "quantize_dynamic",
    "quantize_affine",
    "dequantize_affine",
    "pack",
    "unpack",
    "linear_symmetric",
    "linear_affine",
    "linear_int8",
    "linear_float8",
    "quantize_lut4",
    "dequantize_lut4",
    "linear_lut4",
    "dequantize_grouped",
    "linear_grouped",
)


def _load_native(name: str, *, required: bool) -> None:
    """Load the compiled library ``quanta/qkernels/<name>.so``; a failure says why."""
    spec = importlib.util.find_spec(f"{__name__}.{name}")
    if spec is None or spec.origin is None:
        if required:
            raise ImportError(
                f"quanta.qkernels: its compiled library {name} is missing from the installed "
                "package. Reinstall with torch installed first: "
                "`pip install --no-build-isolation quanta-qkernels`."
            )
        return
    try:
        torch.ops.load_library(spec.origin)
    except OSError as error:
        raise ImportError(
            f"quanta.qkernels: cannot load its compiled library {spec.origin}: {error}. "
            f"It must be built against the installed torch ({torch.__version__}, needs >= 2.11); "
            "reinstall with `pip install --no-build-isolation quanta-qkernels`."
        ) from error


def _register_python_kernels() -> None:
    from quanta.qkernels import _autograd, _fake, cuda_dispatch, reference

    for name in OPS:
        qualname = f"quanta::{name}"
        torch.library.impl(qualname, "CompositeExplicitAutograd")(getattr(reference, name))
        torch.library.register_fake(qualname)(getattr(_fake, name))
    _autograd.register()
    if torch.version.cuda is not None:
        cuda_dispatch.register()  # torch's own CUDA kernels, or quanta_cuda's, per call


_load_native("_C", required=True)  # declares every schema, plus the native CPU kernels
if torch.version.cuda is not None:
    _load_native("_C_cuda", required=False)
_register_python_kernels()

from quanta.qkernels import cuda_dispatch, reference  # noqa: E402


def cpu_isa() -> str:
    """The instruction set the native CPU kernels use now: "amx", "avx512_bf16", "avx512", "avx2"
    or "portable".

    The widest one the processor has, unless the environment variable ``QUANTA_CPU_ISA`` names a
    lower one (read on every kernel call, so it can be changed at run time).
    """
    return torch.ops.quanta.cpu_isa()


__all__ = ["OPS", "__version__", "cpu_isa", "cuda_dispatch", "reference"]
