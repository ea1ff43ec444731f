"""The layout registry: a qtype's layout class owns its stored parts, their shapes and dtypes,
how it is rebuilt from them, and how much memory they take."""

import pytest
import torch

from quanta.qmodules import (
    QBitsTensor,
    QBytesTensor,
    layout_for,
    stored_part_names,
    weight_memory,
)
from quanta.qtypes import (
    PACKED_AFFINE,
    SYMMETRIC,
    QType,
    qfloat8,
    qint2,
    qint4,
    qint8,
    qmxfp4,
    qnf4,
    qnf4_dq,
    qnvfp4,
)

QTYPES = [qint2, qint4, qint8, qfloat8]


def group_size(qtype: QType) -> int | None:
    return 16 if layout_for(qtype).grouped else None


def test_each_qtype_names_its_layout_class():
    assert [layout_for(q) for q in QTYPES] == [QBitsTensor, QBitsTensor, QBytesTensor, QBytesTensor]
    assert (QBitsTensor.layout, QBytesTensor.layout) == (PACKED_AFFINE, SYMMETRIC)
    unknown = QType("qint3", 3, False, torch.uint8, 0, 7, "no-such-layout")
    with pytest.raises(ValueError, match="no weight layout is registered"):
        layout_for(unknown)


@pytest.mark.parametrize("qtype", QTYPES, ids=str)
def test_parts_match_their_specs_and_rebuild_the_same_tensor(qtype):
    torch.manual_seed(0)
    weight = torch.randn(8, 48)
    layout = layout_for(qtype)
    quantized = layout.quantize(weight, qtype, group_size(qtype))
    parts = quantized.inner_tensors()
    specs = layout.part_specs(qtype, 8, 48, group_size(qtype))
    assert list(parts) == list(specs) == list(layout.inner_names)
    for name, (shape, dtype) in specs.items():
        assert tuple(parts[name].shape) == shape
        assert parts[name].dtype == (weight.dtype if dtype is None else dtype)
    assert layout.check_parts(parts, qtype, 8, 48, group_size(qtype)) is None
    rebuilt = layout.from_parts(parts, qtype, group_size(qtype), weight.shape)
    assert torch.equal(rebuilt.dequantize(), quantized.dequantize())
    from_codes = layout.from_weight_parts(
        quantized.weight_parts(), qtype, group_size(qtype), weight.shape
    )
    assert torch.equal(from_codes.dequantize(), quantized.dequantize())


def test_check_parts_says_which_part_is_wrong():
    quantized = QBitsTensor.quantize(torch.randn(8, 48), qint4, 16)
    parts = quantized.inner_tensors()
    assert "codes has shape" in QBitsTensor.check_parts(
        {**parts, "codes": parts["codes"][:4]}, qint4, 8, 48, 16
    )
    float_zero_point = {**parts, "zero_point": parts["zero_point"].float()}
    assert QBitsTensor.check_parts(float_zero_point, qint4, 8, 48, 16) is None  # HQQ
    wrong = {**parts, "zero_point": parts["zero_point"].to(torch.int32)}
    assert "expected uint8 or a float dtype" in QBitsTensor.check_parts(wrong, qint4, 8, 48, 16)


@pytest.mark.parametrize("qtype", QTYPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_stored_bytes_are_what_the_parts_take(qtype, dtype):
    weight = torch.randn(8, 48, dtype=dtype)
    quantized = layout_for(qtype).quantize(weight, qtype, group_size(qtype))
    stored = sum(t.nbytes for t in quantized.inner_tensors().values())
    planned = layout_for(qtype).stored_bytes(qtype, weight.shape, group_size(qtype), dtype)
    assert planned == stored


@pytest.mark.parametrize("qtype", QTYPES, ids=str)
def test_weight_memory_plans_before_freeze_what_freeze_stores(qtype):
    from quanta.qmodules import freeze, quantize

    group = 16 if layout_for(qtype).grouped else None
    model = quantize(torch.nn.Sequential(torch.nn.Linear(48, 8)), weights=qtype, group_size=group)
    planned = weight_memory(model)
    assert weight_memory(freeze(model)) == planned


def test_stored_part_names_cover_every_layout():
    qtypes = [*QTYPES, qnf4, qnf4_dq, qmxfp4, qnvfp4]
    names = {name for qtype in qtypes for name in layout_for(qtype).inner_names}
    block_parts = {"tensor_scale", "scale_codes", "scale_scale", "scale_offset"}
    assert set(stored_part_names()) == names == {"codes", "scale", "zero_point"} | block_parts
