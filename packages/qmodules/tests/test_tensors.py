"""QBytesTensor / QBitsTensor: canonical layout, dequantize, and the derived tensor plumbing."""

import copy
import pickle

import pytest
import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from quanta.qmodules import QBitsTensor, QBytesTensor, QTensor, layout_for
from quanta.qtypes import qfloat8, qfloat8_e5m2, qint2, qint4, qint8

# a weight's dequantized values lie within half a quantization step of the float ones
HALF_STEP = 0.5 + 1e-3


def bytes_tensor(qtype=qint8, dtype=torch.float32) -> QBytesTensor:
    torch.manual_seed(0)
    return QBytesTensor.quantize(torch.randn(24, 40, dtype=dtype), qtype)


def bits_tensor(qtype=qint4, dtype=torch.float32) -> QBitsTensor:
    torch.manual_seed(0)
    return QBitsTensor.quantize(torch.randn(24, 64, dtype=dtype), qtype, group_size=32)


def test_bytes_layout_is_codes_and_per_row_scale():
    tensor = bytes_tensor()
    assert tensor.codes.shape == (24, 40) and tensor.codes.dtype == torch.int8
    assert tensor.scale.shape == (24, 1) and tensor.scale.dtype == torch.float32
    assert tensor.shape == (24, 40) and tensor.dtype == torch.float32


def test_fp8_codes_are_float8():
    tensor = bytes_tensor(qfloat8, torch.bfloat16)
    assert tensor.codes.dtype == torch.float8_e4m3fn
    assert tensor.scale.dtype == torch.bfloat16 and tensor.dtype == torch.bfloat16


@pytest.mark.parametrize("qtype", [qint2, qint4])
def test_bits_layout_is_packed_codes_with_group_params(qtype):
    tensor = bits_tensor(qtype)
    assert tensor.codes.shape == (24, 64 * qtype.bits // 8) and tensor.codes.dtype == torch.uint8
    assert tensor.scale.shape == (24, 2) and tensor.scale.dtype == torch.float32
    assert tensor.zero_point.shape == (24, 2) and tensor.zero_point.dtype == torch.uint8


def test_odd_row_length_packs_into_ceil_bytes():
    tensor = QBitsTensor.quantize(torch.randn(3, 7), qint4, group_size=7)
    assert tensor.codes.shape == (3, 4)
    assert tensor.dequantize().shape == (3, 7)


def test_dequantize_is_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(24, 64)
    tensor = QBitsTensor.quantize(weight, qint4, group_size=32)
    step = tensor.scale.repeat_interleave(32, dim=1)
    assert ((tensor.dequantize() - weight).abs() <= HALF_STEP * step).all()
    tensor = QBytesTensor.quantize(weight, qint8)
    assert ((tensor.dequantize() - weight).abs() <= HALF_STEP * tensor.scale).all()


def near_the_limit(dtype: torch.dtype, rows: int = 8, columns: int = 64) -> torch.Tensor:
    """Weights of dtype up to ±finfo.max: rows 0 and 1 of one sign, the others random, each
    holding both limits (min-max ranges of 2 * finfo.max, absmax of finfo.max)."""
    limit = torch.finfo(dtype).max
    generator = torch.Generator().manual_seed(3)
    weight = (torch.rand(rows, columns, generator=generator, dtype=torch.float64) * 2 - 1) * limit
    weight[:, :2] = torch.tensor([limit, -limit], dtype=torch.float64)
    weight[0], weight[1] = weight[0].abs(), -weight[1].abs()
    return weight.to(dtype)


# |dequantized - weight| near finfo.max: one step for integer codes (the end code of a grid that
# its rounded zero point, or the scale's rounding, pushes past the limit is the one before it),
# float8's relative rounding (2^-4 for e4m3, 2^-3 for e5m2) for float codes; plus the rounding
# of the result to the weight's dtype
NEAR_LIMIT_STEPS = {"qint2": 1.0, "qint4": 1.0, "qint8": 1.0}
NEAR_LIMIT_RELATIVE = {"qfloat8_e4m3fn": 2**-4, "qfloat8_e5m2": 2**-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("qtype", [qint2, qint4, qint8, qfloat8, qfloat8_e5m2], ids=str)
def test_weights_near_the_dtype_limit_dequantize_finite(qtype, dtype):
    """Scales and dequantized values stay finite and close for weights up to ±finfo.max (the
    min-max range, 2 * finfo.max, and the grid's ends used to overflow to Inf)."""
    weight = near_the_limit(dtype)
    group_size = 32 if qtype.bits < 8 else None
    tensor = layout_for(qtype).quantize(weight, qtype, group_size)
    values = tensor.dequantize()
    assert tensor.scale.isfinite().all() and values.isfinite().all()
    error = (values.double() - weight.double()).abs()
    rounding = weight.double().abs() * torch.finfo(dtype).eps
    scale = tensor.scale.double()
    if group_size is not None:
        scale = scale.repeat_interleave(group_size, dim=1)
    if qtype.name in NEAR_LIMIT_STEPS:
        assert (error <= NEAR_LIMIT_STEPS[qtype.name] * scale + rounding).all()
    else:
        relative = NEAR_LIMIT_RELATIVE[qtype.name] * weight.double().abs()
        assert (error <= relative + scale + rounding).all()


def test_conv_weight_keeps_logical_shape_with_2d_codes():
    weight = torch.randn(8, 3, 3, 3)
    tensor = QBitsTensor.quantize(weight, qint4, group_size=27)
    assert tensor.shape == (8, 3, 3, 3) and tensor.scale.shape == (8, 1)
    assert tensor.dequantize().shape == (8, 3, 3, 3)


@pytest.mark.parametrize("qtype", [qint2, qint4, qint8, qfloat8])
def test_all_zero_rows_dequantize_to_exact_zeros(qtype):
    weight = torch.zeros(4, 32)
    weight[1] = torch.linspace(-1, 1, 32)
    tensor = layout_for(qtype).quantize(weight, qtype, 16 if qtype.bits < 8 else None)
    values = tensor.dequantize()
    assert not values.isnan().any()
    assert torch.equal(values[[0, 2, 3]], torch.zeros(3, 32))


@pytest.mark.parametrize("make", [bytes_tensor, bits_tensor])
def test_flatten_unflatten_round_trip(make):
    tensor = make()
    assert is_traceable_wrapper_subclass(tensor)
    names, attributes = tensor.__tensor_flatten__()
    inner = {name: getattr(tensor, name) for name in names}
    rebuilt = type(tensor).__tensor_unflatten__(inner, attributes, tensor.shape, tensor.stride())
    assert torch.equal(rebuilt.dequantize(), tensor.dequantize())


@pytest.mark.parametrize("make", [bytes_tensor, bits_tensor])
def test_deepcopy_pickle_detach_keep_the_values(make):
    tensor = make()
    for other in (copy.deepcopy(tensor), pickle.loads(pickle.dumps(tensor)), tensor.detach()):
        assert type(other) is type(tensor)
        assert other.attributes() == tensor.attributes()
        assert torch.equal(other.dequantize(), tensor.dequantize())
    assert copy.deepcopy(tensor).codes.data_ptr() != tensor.codes.data_ptr()


def test_parameter_stays_a_parameter_through_deepcopy_and_pickle():
    parameter = torch.nn.Parameter(bits_tensor(), requires_grad=False)
    for other in (copy.deepcopy(parameter), pickle.loads(pickle.dumps(parameter))):
        assert isinstance(other, torch.nn.Parameter) and isinstance(other, QBitsTensor)


@pytest.mark.parametrize("make", [bytes_tensor, bits_tensor])
def test_to_dtype_converts_scales_and_keeps_codes(make):
    tensor = make()
    half = tensor.to(torch.float16)
    assert type(half) is type(tensor) and half.dtype == torch.float16
    assert half.scale.dtype == torch.float16 and torch.equal(half.codes, tensor.codes)
    assert tensor.half().dtype == torch.float16


@pytest.mark.parametrize("make", [bytes_tensor, bits_tensor])
def test_device_moves_carry_every_inner_tensor(make):
    tensor = make()
    moved = tensor.to("meta")
    assert moved.device.type == "meta"
    assert all(inner.is_meta for inner in moved.inner_tensors().values())
    back = tensor.cpu()
    assert back.device.type == "cpu" and torch.equal(back.dequantize(), tensor.dequantize())


@pytest.mark.parametrize("make", [bytes_tensor, bits_tensor])
def test_moves_in_inference_mode_stay_quantized_as_in_no_grad(make):
    """There aten.to reaches the QTensor whole (no autograd key to decompose it)."""
    tensor = make()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            half, meta = tensor.to(torch.float16), tensor.to("meta")
            assert tensor.to(torch.float32) is tensor and tensor.to("cpu") is tensor
        assert type(half) is type(tensor) and half.scale.dtype == torch.float16
        assert type(meta) is type(tensor) and meta.codes.is_meta


@pytest.mark.parametrize("make", [bytes_tensor, bits_tensor])
def test_views_in_inference_mode_of_a_tensor_made_outside(make):
    """Views share their base's version counter: built as normal tensors, as torch does."""
    tensor = make()
    with torch.inference_mode():
        parameter = torch.nn.Parameter(tensor, requires_grad=False)
        transposed = tensor.t()
    assert isinstance(parameter, torch.nn.Parameter) and type(parameter) is type(tensor)
    assert torch.equal(parameter.dequantize(), tensor.dequantize())
    assert torch.equal(transposed, tensor.dequantize().t())


@pytest.mark.parametrize("make", [bytes_tensor, bits_tensor])
def test_the_type_called_on_a_tensor_makes_it_a_parameter(make):
    """accelerate rebuilds each parameter it moves as type(param)(tensor, requires_grad=...)."""
    tensor = make()
    parameter = type(tensor)(tensor, requires_grad=False)
    assert isinstance(parameter, torch.nn.Parameter) and type(parameter) is type(tensor)
    assert not parameter.requires_grad and parameter.codes.data_ptr() == tensor.codes.data_ptr()


def test_repr_names_layout_and_settings():
    text = repr(bits_tensor())
    assert "QBitsTensor" in text and "qint4" in text and "group_size=32" in text


def test_other_ops_fall_back_to_the_dequantized_tensor():
    tensor = bits_tensor()
    dense = tensor.dequantize()
    assert torch.equal(tensor * 2, dense * 2)
    assert torch.equal(tensor.t(), dense.t())
    assert torch.equal(torch.matmul(torch.ones(3, 24), tensor), torch.ones(3, 24) @ dense)
    assert not isinstance(tensor + 1, QTensor)


def test_in_place_ops_on_a_quantized_tensor_raise():
    with pytest.raises(NotImplementedError, match="in place"):
        bytes_tensor().mul_(2)
