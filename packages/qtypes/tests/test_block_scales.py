"""The 4-bit float and microscaled qtypes: their tables, names and block scales, checked against
values worked by hand from bitsandbytes and the OCP Microscaling v1.0 spec."""

import pytest
import torch

from quanta.qtypes import (
    E2M1_TABLE,
    FP4_TABLE,
    LOOKUP_TABLE,
    MICROSCALED,
    NF4_TABLE,
    NVFP4,
    double_dequantize_scale,
    double_quantize_scale,
    mx_scale,
    nvfp4_scales,
    qfp4,
    qint4,
    qmxfp4,
    qmxfp8,
    qnf4,
    qnvfp4,
    table_absmax_scale,
    to_qtype,
)

E8M0_BIAS = 127


@pytest.mark.parametrize(
    ("name", "qtype", "layout", "block_size", "scale_dtype"),
    [
        ("nf4", qnf4, LOOKUP_TABLE, None, None),
        ("fp4", qfp4, LOOKUP_TABLE, None, None),
        ("mxfp4", qmxfp4, MICROSCALED, 32, torch.float8_e8m0fnu),
        ("nvfp4", qnvfp4, NVFP4, 16, torch.float8_e4m3fn),
        ("mxfp8", qmxfp8, MICROSCALED, 32, torch.float8_e8m0fnu),
    ],
)
def test_the_formats_by_name(name, qtype, layout, block_size, scale_dtype):
    assert to_qtype(name) is qtype
    assert to_qtype("q" + name) is qtype
    assert (qtype.layout, qtype.block_size, qtype.scale_dtype) == (layout, block_size, scale_dtype)


def test_tables():
    # e2m1 (OCP MX v1.0 table 5): sign bit 3, exponent bias 1, 0b0001 the subnormal 0.5
    assert E2M1_TABLE[:8] == (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    assert E2M1_TABLE[8:] == tuple(-v for v in E2M1_TABLE[:8])
    assert (qmxfp4.qmin, qmxfp4.qmax, qmxfp8.qmax) == (-6.0, 6.0, 448.0)
    # bitsandbytes: NF4 sorted, from -1 to 1 with an exact 0 at code 7; FP4's sign is bit 3
    assert list(NF4_TABLE) == sorted(NF4_TABLE) and NF4_TABLE[7] == 0.0
    assert (NF4_TABLE[0], NF4_TABLE[-1]) == (-1.0, 1.0)
    assert FP4_TABLE[3] == 1.0 and FP4_TABLE[11] == -1.0 and FP4_TABLE[1] == 1 / 192
    assert qint4.table is None and qint4.block_size is None  # the older qtypes are unchanged


def e8m0_exponents(scale: torch.Tensor) -> list[int]:
    return (scale.view(torch.uint8).int() - E8M0_BIAS).flatten().tolist()


def block(largest: float, size: int = 32) -> list[float]:
    """A block whose largest magnitude is `largest` (the others are smaller)."""
    return [largest] + [largest / 8] * (size - 1)


def test_mx_shared_exponent_follows_the_spec():
    # X = floor(log2(max|V|)) - emax_elem, emax_elem = 2 (e2m1: 6 = 1.5 * 2**2), 8 (e4m3)
    x = torch.tensor([block(5.0), block(0.75), block(100.0), block(6.0), block(8.0)])
    # floor(log2 5) = 2 -> 0;  log2 .75 -> -1 -> -3;  log2 100 -> 6 -> 4;  6 -> 2 -> 0;  8 -> 3 -> 1
    assert e8m0_exponents(mx_scale(x, qmxfp4)) == [0, -3, 4, 0, 1]
    # e4m3: floor(log2 1000) = 9 -> 9 - 8 = 1; floor(log2 448) = 8 -> 0; 2**-3 -> -11
    x = torch.tensor([block(1000.0), block(448.0), block(0.125)])
    assert e8m0_exponents(mx_scale(x, qmxfp8)) == [1, 0, -11]


def test_mx_scale_of_zero_nan_and_extreme_blocks():
    x = torch.tensor([[0.0] * 32, block(float("nan")), block(float("inf")), block(2.0**-140)])
    x = torch.cat([x, torch.tensor([block(3.0e38)])])
    scale = mx_scale(x, qmxfp4).view(torch.uint8).flatten().tolist()
    # zero: the smallest scale 2**-127 (byte 0); NaN/Inf: the NaN byte 255; tiny: clamped to
    # -127; floor(log2 3e38) = 127 -> 125
    assert scale == [0, 255, 255, 0, 125 + E8M0_BIAS]
    # bfloat16 input: the same exponent as its float32 value
    assert e8m0_exponents(mx_scale(torch.tensor([block(5.0)], dtype=torch.bfloat16), qmxfp4)) == [0]


def test_nvfp4_two_level_scale():
    # tensor absmax 2688 = 6 * 448: tensor scale 1; block 1 absmax 2688 -> 2688 / 6 = 448;
    # block 2 absmax 3 -> 0.5 (exact in e4m3)
    x = torch.tensor([block(2688.0, 16) + block(3.0, 16)])
    scale, tensor_scale = nvfp4_scales(x, qnvfp4)
    assert tensor_scale.tolist() == [1.0] and tensor_scale.dtype == torch.float32
    assert scale.dtype == torch.float8_e4m3fn and scale.float().tolist() == [[448.0, 0.5]]
    # every block scale is rounded to e4m3: 0.3 / 6 / (0.3 / 2688) = 448 still, 0.1 -> 149.33 -> 144
    x = torch.tensor([block(0.3, 16) + block(0.1, 16)])
    scale, tensor_scale = nvfp4_scales(x, qnvfp4)
    assert tensor_scale.item() == pytest.approx(0.3 / 2688)
    assert scale.float().tolist() == [[448.0, 144.0]]


def test_nvfp4_nan_stays_in_its_block_and_zero_tensors_are_finite():
    x = torch.tensor([block(float("nan"), 16) + block(3.0, 16)])
    scale, tensor_scale = nvfp4_scales(x, qnvfp4)
    assert scale.float()[0, 0].isnan() and scale.float()[0, 1].item() == 448.0
    assert tensor_scale.isfinite().all()
    scale, tensor_scale = nvfp4_scales(torch.zeros(2, 32), qnvfp4)
    assert tensor_scale.item() == 1.0 and (scale.float() > 0).all()


def test_table_absmax_scale_is_each_blocks_absmax():
    x = torch.tensor([[1.0, -3.0, 0.5, 2.0], [0.0, 0.0, float("nan"), 1.0]])
    scale = table_absmax_scale(x, qnf4, 2)
    assert scale[0].tolist() == [3.0, 2.0]
    assert scale[1, 0].item() == 1.0 and scale[1, 1].isnan()  # zero block: 1, no 0/0
    with pytest.raises(ValueError, match="blocks of 3"):
        table_absmax_scale(x, qnf4, 3)
    with pytest.raises(ValueError, match="nf4/fp4 qtypes"):
        table_absmax_scale(x, qmxfp4, 2)


# half a step of int8 over each block's centered absmax: |error| <= absmax / 127 / 2
DOUBLE_QUANT_STEP_FRACTION = 0.5 / 127


def test_double_quantized_scales_round_trip_within_half_a_step():
    torch.manual_seed(0)
    scale = torch.rand(40, 20) + 0.5  # 800 scales: blocks of 256, the last one of 32
    codes, code_scale, offset = double_quantize_scale(scale)
    assert (codes.dtype, codes.shape, code_scale.shape, offset.shape) == (
        torch.int8,
        scale.shape,
        (4,),
        (1,),
    )
    restored = double_dequantize_scale(codes, code_scale, offset)
    bound = (scale - scale.mean()).abs().max() * DOUBLE_QUANT_STEP_FRACTION * 1.001
    assert (restored - scale).abs().max() <= bound
