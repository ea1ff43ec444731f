import pytest
import torch

from quanta.qtypes import (
    PACKED_AFFINE,
    SYMMETRIC,
    absmax_scale,
    least_error_candidate,
    minmax_affine_params,
    qfloat8,
    qfloat8_e4m3fn,
    qfloat8_e4m3fnuz,
    qfloat8_e5m2,
    qint2,
    qint4,
    qint8,
    qtype_names,
    symmetric_scale,
    to_qtype,
)

ALL = [qint2, qint4, qint8, qfloat8_e4m3fn, qfloat8_e4m3fnuz, qfloat8_e5m2]


@pytest.mark.parametrize(
    ("qtype", "bits", "is_float", "dtype", "qmin", "qmax"),
    [
        (qint2, 2, False, torch.uint8, 0, 3),
        (qint4, 4, False, torch.uint8, 0, 15),
        (qint8, 8, False, torch.int8, -128, 127),
        (qfloat8_e4m3fn, 8, True, torch.float8_e4m3fn, -448, 448),
        (qfloat8_e4m3fnuz, 8, True, torch.float8_e4m3fnuz, -240, 240),
        (qfloat8_e5m2, 8, True, torch.float8_e5m2, -57344, 57344),
    ],
)
def test_qtype_attributes(qtype, bits, is_float, dtype, qmin, qmax):
    assert (qtype.bits, qtype.is_floating_point, qtype.dtype) == (bits, is_float, dtype)
    assert (qtype.qmin, qtype.qmax) == (qmin, qmax)
    assert qtype.layout == (PACKED_AFFINE if bits < 8 else SYMMETRIC)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("int4", qint4),
        ("qint4", qint4),
        ("INT8", qint8),
        ("int2", qint2),
        ("float8", qfloat8),
        ("fp8", qfloat8),
        ("qfloat8", qfloat8_e4m3fn),
        ("fp8_e5m2", qfloat8_e5m2),
        ("qfloat8_e4m3fnuz", qfloat8_e4m3fnuz),
    ],
)
def test_to_qtype_accepts_names_and_aliases(name, expected):
    assert to_qtype(name) is expected
    assert to_qtype(expected) is expected


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"weights='int3'.*qint4") as info:
        to_qtype("int3", argument="weights")
    for name in ("int2", "int4", "int8", "fp8"):
        assert name in str(info.value)
    assert set(qtype_names()) >= {q.name for q in ALL}


def test_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="weights must be"):
        to_qtype(4, argument="weights")


@pytest.mark.parametrize("qtype", [qint8, qfloat8_e4m3fn, qfloat8_e5m2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_absmax_scale_maps_row_maximum_to_qmax(qtype, dtype):
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[3] = 0
    scale = absmax_scale(x, qtype, axis=0)
    assert scale.shape == (16, 1) and scale.dtype == dtype
    expected = x.float().abs().amax(dim=1, keepdim=True) / qtype.qmax
    expected = expected.clamp(min=torch.finfo(dtype).tiny)  # never subnormal in the weight dtype
    assert torch.allclose(scale[[0, 1, 2, 4]].float(), expected[[0, 1, 2, 4]], rtol=1e-2)
    assert scale[3].item() == 1.0  # an all-zero row gets a harmless scale, not 0


def test_absmax_scale_per_tensor_and_other_axis():
    x = torch.arange(12.0).reshape(3, 4) - 6
    assert absmax_scale(x, qint8, axis=None).item() == pytest.approx(6 / 127)
    assert absmax_scale(x, qint8, axis=-1).shape == (1, 4)


@pytest.mark.parametrize("qtype", [qint2, qint4])
def test_minmax_affine_params_reconstruct_within_half_a_step(qtype):
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    scale, zero_point = minmax_affine_params(x, qtype, group_size=16)
    assert scale.shape == zero_point.shape == (8, 4)
    assert zero_point.dtype == torch.uint8
    groups = x.reshape(8, 4, 16)
    codes = torch.clamp(
        torch.round(groups / scale[..., None]) + zero_point[..., None], 0, qtype.qmax
    )
    restored = (codes - zero_point[..., None]) * scale[..., None]
    assert ((restored - groups).abs() <= scale[..., None] / 2 + 1e-6).all()


def test_minmax_affine_params_keep_zero_exact():
    x = torch.zeros(2, 8)
    x[1, :4] = torch.tensor([0.5, 1.0, 1.5, 2.0])  # all positive group: the range still holds 0
    scale, zero_point = minmax_affine_params(x, qint4, group_size=4)
    assert scale[0].tolist() == [1.0, 1.0] and zero_point[0].tolist() == [0, 0]
    assert zero_point[1, 0].item() == 0 and scale[1, 0].item() == pytest.approx(2 / 15)


def test_scale_helpers_refuse_the_wrong_qtype_family():
    with pytest.raises(ValueError, match="minmax_affine_params"):
        absmax_scale(torch.ones(2, 2), qint4)
    with pytest.raises(ValueError, match="2/4-bit"):
        minmax_affine_params(torch.ones(2, 2), qint8, 2)
    with pytest.raises(ValueError, match="groups of 3"):
        minmax_affine_params(torch.ones(2, 4), qint4, 3)


def _rounding_error(x, scale, qtype):
    codes = (x / scale).clamp(qtype.qmin, qtype.qmax)
    codes = codes.round() if not qtype.is_floating_point else codes.to(qtype.dtype).float()
    return ((codes * scale - x) ** 2).sum(dim=1)


@pytest.mark.parametrize("qtype", [qfloat8_e4m3fn, qfloat8_e5m2])
def test_float8_symmetric_scale_never_loses_to_absmax_and_never_clips(qtype):
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(2))
    x[5] = 0
    best, plain = symmetric_scale(x, qtype), absmax_scale(x, qtype)
    assert best.shape == plain.shape == (64, 1)
    assert (best >= plain).all() and (best < 2 * plain).all()  # absmax fits: no clipping
    assert (_rounding_error(x, best, qtype) <= _rounding_error(x, plain, qtype)).all()
    assert _rounding_error(x, best, qtype).sum() < 0.95 * _rounding_error(x, plain, qtype).sum()
    assert best[5].item() == 1.0


def test_int8_symmetric_scale_is_the_absmax_scale():
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(symmetric_scale(x, qint8), absmax_scale(x, qint8))


def test_least_error_candidate_keeps_per_slice_the_first_least_error():
    candidates = [torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]),
                  torch.tensor([2.0, 2.0, 2.0])]  # fmt: skip
    errors = [torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 5.0]),
              torch.tensor([2.0, 0.5, 1.0])]  # fmt: skip
    best = least_error_candidate(zip(candidates, errors, strict=True))
    assert torch.equal(best, torch.tensor([1.0, 2.0, 2.0]))


def test_least_error_candidate_keeps_tuples_together_and_can_stop_without_gain():
    pairs = [
        ((torch.tensor([0.0, 0.0]), torch.tensor([10.0, 10.0])), torch.tensor([2.0, 2.0])),
        ((torch.tensor([1.0, 1.0]), torch.tensor([11.0, 11.0])), torch.tensor([1.0, 3.0])),
        ((torch.tensor([2.0, 2.0]), torch.tensor([12.0, 12.0])), torch.tensor([4.0, 4.0])),
        ((torch.tensor([3.0, 3.0]), torch.tensor([13.0, 13.0])), torch.tensor([0.0, 0.0])),
    ]
    scale, zero = least_error_candidate(pairs)
    assert torch.equal(scale, torch.tensor([3.0, 3.0])) and torch.equal(zero, scale + 10)
    scale, zero = least_error_candidate(pairs, stop_without_gain=True)  # stops at the third
    assert torch.equal(scale, torch.tensor([1.0, 0.0])) and torch.equal(zero, scale + 10)


def test_least_error_candidate_needs_a_candidate():
    with pytest.raises(ValueError, match="at least one candidate"):
        least_error_candidate([])


LIMIT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("dtype", LIMIT_DTYPES, ids=str)
@pytest.mark.parametrize("qtype", [qint2, qint4])
def test_minmax_affine_params_of_the_widest_range_are_finite(qtype, dtype):
    """max - min of ±finfo.max overflows; the scale is still a qmax-th of the range."""
    limit = torch.finfo(dtype).max
    x = torch.tensor([[limit, -limit, 0.0, 1.0], [1.0, 2.0, -3.0, 0.0]], dtype=dtype)
    scale, zero_point = minmax_affine_params(x, qtype, group_size=4)
    assert scale.dtype == dtype and scale.isfinite().all()
    expected = torch.tensor([limit, 2.5], dtype=torch.float64) * (2 / qtype.qmax)
    torch.testing.assert_close(scale.double().flatten(), expected, rtol=1e-2, atol=0)
    # half-way for ±limit (either way, as the scale rounds), 3/5 of the way for -3 .. 2
    assert zero_point[0].item() in (qtype.qmax // 2, qtype.qmax // 2 + 1)
    assert zero_point[1].item() == round(3 * qtype.qmax / 5)


@pytest.mark.parametrize("dtype", LIMIT_DTYPES, ids=str)
@pytest.mark.parametrize("qtype", [qint8, qfloat8_e4m3fn, qfloat8_e5m2])
def test_symmetric_scales_near_the_limit_keep_every_code_finite(qtype, dtype):
    """absmax / qmax rounded up to the dtype made qmax * scale overflow (int8 also -128 * scale):
    with absmax_scale every code, with symmetric_scale every code x quantizes to, times the
    scale (computed as the dequantizers do) is finite."""
    limit = torch.finfo(dtype).max
    x = torch.tensor([[limit, -limit], [limit * 0.999, 0.0], [1.0, -2.0]], dtype=dtype)
    wide = torch.promote_types(dtype, torch.float32)
    scale = absmax_scale(x, qtype)
    assert (scale.to(wide) * max(-qtype.qmin, qtype.qmax)).to(dtype).isfinite().all()
    assert scale[2].item() == absmax_scale(x[2:], qtype).item()  # the others as before
    assert (scale[:2].double() > 0.99 * limit / qtype.qmax).all()
    best = symmetric_scale(x, qtype).to(wide)
    codes = (x.to(wide) / best).clamp(qtype.qmin, qtype.qmax)
    codes = codes.round() if not qtype.is_floating_point else codes.to(qtype.dtype).to(wide)
    assert (codes * best).to(dtype).isfinite().all()
