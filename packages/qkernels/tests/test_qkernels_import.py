"""The package registers every op, exposes a small API and imports nothing above it."""

import subprocess
import sys

import torch

import quanta.qkernels
from quanta.qkernels import reference


def test_every_op_is_registered_with_a_reference_and_a_fake():
    assert len(quanta.qkernels.OPS) == 16
    for name in quanta.qkernels.OPS:
        qualname = f"quanta::{name}"
        assert hasattr(torch.ops.quanta, name)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeExplicitAutograd")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta")  # the fake
        assert callable(getattr(reference, name))


def test_native_cpu_kernels_are_registered():
    native = {
        n
        for n in quanta.qkernels.OPS
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"quanta::{n}", "CPU")
    }
    assert native == {
        "quantize_symmetric",
        "dequantize_symmetric",
        "quantize_dynamic",
        "unpack",
        "linear_symmetric",
        "linear_affine",
        "linear_int8",
        "linear_lut4",
        "linear_grouped",
    }


def test_public_api():
    assert quanta.qkernels.__version__ == "0.2.0"
    assert set(quanta.qkernels.__all__) == {
        "OPS",
        "__version__",
        "cpu_isa",
        "cuda_dispatch",
        "reference",
    }


def test_import_loads_nothing_above_qkernels():
    code = (
        "import sys, quanta.qkernels\n"
        "above = [m for m in sys.modules\n"
        "         if m.startswith('quanta.') and m.split('.')[1] != 'qkernels']\n"
        "assert not above, above\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
