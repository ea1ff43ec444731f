"""pack / unpack: the layout of docs/ops.md, native kernels bit-exact against the reference."""

import pytest
import torch

from quanta.qkernels import reference

SHAPES = [(1,), (7,), (3, 1), (5, 2), (4, 8), (3, 9), (2, 3, 13), (17, 31), (64, 130)]


def expected_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Code j in byte j // (8 // bits) at bit (j % (8 // bits)) * bits, one code at a time."""
    per_byte = 8 // bits
    k = codes.shape[-1]
    flat = codes.reshape(-1, k).tolist()
    width = (k * bits + 7) // 8
    out = [[0] * width for _ in flat]
    for row, values in zip(out, flat, strict=True):
        for j, code in enumerate(values):
            row[j // per_byte] |= code << ((j % per_byte) * bits)
    return torch.tensor(out, dtype=torch.uint8).reshape(*codes.shape[:-1], width)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_layout(device, bits, shape):
    codes = torch.randint(0, 2**bits, shape, dtype=torch.uint8)
    packed = torch.ops.quanta.pack(codes.to(device), bits)
    assert packed.dtype == torch.uint8
    assert torch.equal(packed.cpu(), expected_pack(codes, bits))


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip(device, bits, shape):
    codes = torch.randint(0, 2**bits, shape, dtype=torch.uint8, device=device)
    packed = torch.ops.quanta.pack(codes, bits)
    assert torch.equal(torch.ops.quanta.unpack(packed, bits, shape[-1]), codes)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 31, 64, 257])
@pytest.mark.parametrize("leading", [(), (1,), (6,), (2, 3), (0,)], ids=str)
def test_native_unpack_matches_reference(device, bits, size, leading):
    width = (size * bits + 7) // 8
    # Random bytes, padding bits included: both must ignore the bits past `size`.
    packed = torch.randint(0, 256, (*leading, width), dtype=torch.uint8, device=device)
    native = torch.ops.quanta.unpack(packed, bits, size)
    assert native.shape == (*leading, size)
    assert torch.equal(native, reference.unpack(packed, bits, size))


def test_native_unpack_non_contiguous(device):
    packed = torch.randint(0, 256, (8, 10), dtype=torch.uint8, device=device)[:, :5]
    assert not packed.is_contiguous()
    assert torch.equal(torch.ops.quanta.unpack(packed, 4, 9), reference.unpack(packed, 4, 9))


def test_native_unpack_large_multithreaded():
    packed = torch.randint(0, 256, (4096, 513), dtype=torch.uint8)
    assert torch.equal(torch.ops.quanta.unpack(packed, 4, 1025), reference.unpack(packed, 4, 1025))


def test_native_cpu_kernel_is_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("quanta::unpack", "CPU")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_unpack_is_native_and_graph_capturable():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("quanta::unpack", "CUDA")
    packed = torch.randint(0, 256, (32, 33), dtype=torch.uint8, device="cuda")
    expected = reference.unpack(packed, 4, 65)
    torch.ops.quanta.unpack(packed, 4, 65)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.quanta.unpack(packed, 4, 65)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
