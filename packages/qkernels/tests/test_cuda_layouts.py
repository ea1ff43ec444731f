"""tinygemm's layout built from quanta's canonical one (cuda_layouts), checked on CPU: the byte
order of the CUDA conversion's input against torchao's formula, the scale-and-zeros convention,
and the whole conversion end to end through torch's CPU twin of tinygemm."""

import pytest
import torch

from quanta.qkernels import cuda_dispatch, cuda_layouts, reference

# tinygemm dequantizes to bfloat16 and takes zero = (8 - zero_point) * scale rounded to bfloat16:
# a few bfloat16 steps (2**-8) of the output's scale, against the reference's bf16 weight.
INT4PACK_RTOL = 2e-2


def affine_weight(n: int, k: int, group_size: int, float_zero: bool = False):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    scale = (torch.rand(n, k // group_size) * 0.1 + 0.01).to(torch.bfloat16)
    zero_point = torch.randint(0, 16, (n, k // group_size), dtype=torch.uint8)
    if float_zero:  # HQQ keeps a float zero point
        zero_point = zero_point.to(torch.bfloat16) + 0.25
    return torch.ops.quanta.pack(codes, 4), scale, zero_point


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.float(), expected.float()
    return float((actual - expected).norm() / expected.norm())


def test_int4pack_source_is_torchao_byte_order():
    # torchao builds _convert_weight_to_int4pack's input as (w[:, ::2] << 4 | w[:, 1::2])
    codes = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    expected = (codes[:, ::2] << 4) | codes[:, 1::2]
    assert torch.equal(cuda_layouts.int4pack_source(torch.ops.quanta.pack(codes, 4)), expected)


@pytest.mark.parametrize("float_zero", [False, True], ids=["uint8_zero", "float_zero"])
def test_scales_and_zeros_reproduce_the_affine_values(float_zero):
    n, k, group_size = 16, 128, 32
    packed, scale, zero_point = affine_weight(n, k, group_size, float_zero)
    pairs = cuda_layouts.scales_and_zeros(scale, zero_point)
    assert pairs.shape == (k // group_size, n, 2) and pairs.dtype == torch.bfloat16
    codes = torch.ops.quanta.unpack(packed, 4, k).float().reshape(n, k // group_size, group_size)
    tinygemm_scale, zero = pairs[..., 0].t().float(), pairs[..., 1].t().float()
    tinygemm = (codes - cuda_layouts.INT4PACK_MIDDLE) * tinygemm_scale[..., None] + zero[..., None]
    expected = reference.dequantize_affine(
        codes.reshape(n, k).to(torch.uint8), scale, zero_point, group_size, torch.float32
    )
    # zero is rounded once to bfloat16: at most half a step of |8 - zero_point| * scale
    bound = 8 * scale.float().amax() * 2**-8
    assert (tinygemm.reshape(n, k) - expected).abs().max() <= bound


@pytest.mark.parametrize(
    ("rows", "n", "k", "group_size"),
    [(1, 16, 64, 32), (3, 48, 256, 64), (17, 32, 384, 128), (64, 16, 512, 256)],
)
@pytest.mark.parametrize("float_zero", [False, True], ids=["uint8_zero", "float_zero"])
def test_int4pack_matches_the_reference_on_cpu(rows, n, k, group_size, float_zero):
    torch.manual_seed(rows)
    packed, scale, zero_point = affine_weight(n, k, group_size, float_zero)
    form = cuda_layouts.to_int4pack(packed, scale, zero_point, group_size)
    input = torch.randn(rows, k, dtype=torch.bfloat16)
    out = cuda_layouts.int4pack_mm(input, form, group_size)
    expected = reference.linear_affine(input, packed, scale, zero_point, 4, group_size, None)
    assert out.shape == expected.shape and out.dtype == torch.bfloat16
    assert relative_error(out, expected) < INT4PACK_RTOL


@pytest.mark.parametrize("rows", [1, 5, 64, 65], ids=lambda r: f"M{r}")
def test_linear_affine_int4pack_takes_tinygemm_at_small_m(rows):
    # the module entry point: tinygemm (here its CPU twin) up to TINYGEMM_MAX_ROWS rows, the op
    # above; both equal the reference, with bias and a 3-D input
    n, k, group_size = 32, 128, 32
    packed, scale, zero_point = affine_weight(n, k, group_size)
    form = cuda_layouts.to_int4pack(packed, scale, zero_point, group_size)
    input = torch.randn(1, rows, k, dtype=torch.bfloat16)
    bias = torch.randn(n, dtype=torch.bfloat16)
    out = cuda_dispatch.linear_affine_int4pack(
        input, packed, scale, zero_point, group_size, bias, *form
    )
    expected = reference.linear_affine(input, packed, scale, zero_point, 4, group_size, bias)
    assert out.shape == (1, rows, n)
    assert relative_error(out, expected) < INT4PACK_RTOL


@pytest.mark.parametrize(
    ("n", "k", "bits", "group_size", "fits"),
    [
        (16, 128, 4, 128, True),
        (8, 32, 4, 32, True),  # K = 2 tiles of 16
        (12, 128, 4, 128, False),  # N not a multiple of 8
        (16, 96, 4, 32, True),  # K = 3 x 2 tiles of 16
        (16, 128, 2, 128, False),  # tinygemm is 4-bit only
        (16, 512, 4, 512, False),  # groups up to 256
    ],
)
def test_int4pack_fits(n, k, bits, group_size, fits):
    assert cuda_layouts.int4pack_fits(n, k, bits, group_size) is fits


def test_inner_k_tiles_takes_the_widest_tiling():
    assert [cuda_layouts.inner_k_tiles(k) for k in (4096, 64, 32, 48)] == [8, 4, 2, None]


def test_no_form_off_cuda():
    packed, scale, zero_point = affine_weight(16, 128, 32)
    assert cuda_dispatch.int4pack_for(packed, scale, zero_point, 4, 32) is None
