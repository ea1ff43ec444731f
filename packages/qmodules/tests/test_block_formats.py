"""The 4-bit float and microscaled layouts (nf4, fp4, mxfp4, nvfp4, mxfp8): their parts, codes
worked by hand from the specs, round-trip errors, NaN, group sizes, modules and compile."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quanta.qmodules import (
    ModuleConfig,
    QDoubleQuantLookupTensor,
    QLookupTensor,
    QMicroscaledTensor,
    QNVFP4Tensor,
    freeze,
    layout_for,
    quantize,
)
from quanta.qtypes import qfp4, qfp4_dq, qmxfp4, qmxfp8, qnf4, qnf4_dq, qnvfp4

FORMATS = [qnf4, qfp4, qnf4_dq, qfp4_dq, qmxfp4, qnvfp4, qmxfp8]
# one qtype per layout and code kind, where the table does not matter (fp4 runs as nf4 does)
ONE_PER_LAYOUT = [qnf4, qnf4_dq, qmxfp4, qnvfp4, qmxfp8]
# relative RMS error of a N(0, 1) weight [64, 256] (measured: nf4 0.092, fp4 0.122, mxfp4
# 0.115, nvfp4 0.095, mxfp8 0.029; double quantization changes the third digit), + 10%
RELATIVE_RMS_BOUND = {
    **{qnf4: 0.10, qfp4: 0.135, qnf4_dq: 0.10, qfp4_dq: 0.135},
    **{qmxfp4: 0.127, qnvfp4: 0.105, qmxfp8: 0.032},
}
# the kernels sum K products in another order than F.linear, and round to bfloat16 (2**-8)
LINEAR_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def quantized(weight: torch.Tensor, qtype) -> torch.Tensor:
    return layout_for(qtype).quantize(weight, qtype, 64 if qtype.block_size is None else None)


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(
        (actual.float() - expected).square().mean().sqrt() / expected.square().mean().sqrt()
    )


def test_each_format_names_its_layout():
    lookup, double, micro = QLookupTensor, QDoubleQuantLookupTensor, QMicroscaledTensor
    expected = [lookup, lookup, double, double, micro, QNVFP4Tensor, micro]
    assert [layout_for(q) for q in FORMATS] == expected


@pytest.mark.parametrize("qtype", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_parts_match_their_specs_and_rebuild_the_same_tensor(qtype, dtype):
    torch.manual_seed(0)
    weight = torch.randn(8, 64, dtype=dtype)
    tensor = quantized(weight, qtype)
    layout, group = layout_for(qtype), 64 if qtype.block_size is None else qtype.block_size
    parts = tensor.inner_tensors()
    specs = layout.part_specs(qtype, 8, 64, group)
    assert list(parts) == list(specs) == list(layout.inner_names)
    for name, (shape, part_dtype) in specs.items():
        assert (tuple(parts[name].shape), parts[name].dtype) == (shape, part_dtype or dtype)
    assert layout.check_parts(parts, qtype, 8, 64, group) is None
    rebuilt = layout.from_parts(parts, qtype, group, weight.shape, dtype)
    assert rebuilt.dtype == tensor.dtype == tensor.dequantize().dtype == dtype
    assert torch.equal(rebuilt.dequantize(), tensor.dequantize())
    stored = sum(part.nbytes for part in parts.values())
    assert layout.stored_bytes(qtype, weight.shape, group, dtype) == stored == tensor.nbytes


@pytest.mark.parametrize("qtype", FORMATS, ids=str)
def test_round_trip_error_of_a_normal_weight(qtype):
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    assert relative_rms(quantized(weight, qtype).dequantize(), weight) < RELATIVE_RMS_BOUND[qtype]


def test_mxfp4_codes_of_a_hand_worked_block():
    # max|block| = 5: X = floor(log2 5) - 2 = 0, scale 1. 5 lies halfway between 4 (code 6)
    # and 6 (code 7): the even code, 4. -0.7 -> -0.5 (code 9); 1.25 -> tie 1 / 1.5 -> 1
    # (code 2, even); 2.9 -> 3 (code 5); 0.2 -> 0 (code 0).
    block = torch.tensor([[5.0, -0.7, 1.25, 2.9, 0.2] + [0.0] * 27])
    tensor = QMicroscaledTensor.quantize(block, qmxfp4)
    codes = torch.ops.quanta.unpack(tensor.codes, 4, 32)[0, :5].tolist()
    assert codes == [6, 9, 2, 5, 0]
    assert tensor.dequantize()[0, :5].tolist() == [4.0, -0.5, 1.0, 3.0, 0.0]


def test_mx_elements_saturate():
    # max 100: X = floor(log2 100) - 2 = 4, scale 16; 100 / 16 = 6.25 saturates to 6 -> 96;
    # -13 / 16 = -0.8125 -> -1 -> -16. mxfp8: max 1000, X = 9 - 8 = 1; 1000 / 2 = 500 -> 448
    # -> 896 (a plain float8 cast would give NaN); 3 / 2 = 1.5 exactly -> 3.
    fp4 = QMicroscaledTensor.quantize(torch.tensor([[100.0, -13.0] + [0.0] * 30]), qmxfp4)
    assert fp4.dequantize()[0, :2].tolist() == [96.0, -16.0]
    fp8 = QMicroscaledTensor.quantize(torch.tensor([[1000.0, 3.0] + [0.0] * 30]), qmxfp8)
    assert fp8.dequantize()[0, :2].tolist() == [896.0, 3.0]


def test_nvfp4_codes_of_hand_worked_blocks():
    # tensor scale 2688 / 2688 = 1; block 1 scale 448: 2688 / 448 = 6 (code 7), 700 / 448 =
    # 1.5625 -> 1.5 (code 3) -> 672. Block 2 scale 3 / 6 = 0.5: 1.25 / 0.5 = 2.5, halfway
    # between 2 (code 4) and 3 (code 5) -> code 4 -> 1.0; -3 -> -6 (code 15) -> -3.
    row = [2688.0, 700.0] + [0.0] * 14 + [3.0, 1.25, -3.0] + [0.0] * 13
    tensor = QNVFP4Tensor.quantize(torch.tensor([row]), qnvfp4)
    codes = torch.ops.quanta.unpack(tensor.codes, 4, 32)[0].tolist()
    assert (codes[:2], codes[16:19]) == ([7, 3], [7, 4, 15])
    assert tensor.dequantize()[0, [0, 1, 16, 17, 18]].tolist() == [2688.0, 672.0, 3.0, 1.0, -3.0]


def test_nvfp4_linear_in_fp16_does_not_overflow_before_the_tensor_scale():
    # the two-level codes x block scales alone reach 2688 a weight (~1300 for uniform ones), and
    # summed over 4096 inputs they overflow fp16 unless the per-tensor scale comes first
    torch.manual_seed(0)
    weight = ((torch.rand(16, 4096) * 2 - 1) * 0.01).half()
    tensor = QNVFP4Tensor.quantize(weight, qnvfp4)
    x = torch.randn(3, 4096).half()
    output = F.linear(x, tensor)
    expected = x.float() @ tensor.dequantize().float().T
    assert torch.isfinite(output).all()
    assert torch.allclose(output.float(), expected, rtol=1e-2, atol=1e-2)


def test_nf4_codes_of_a_hand_worked_block():
    # absmax 2: 1.0 / 2 = 0.5 lies between 0.4407 (code 12) and 0.5626 (code 13), nearer 12;
    # -2 -> -1 (code 0); 0.1 / 2 = 0.05 -> 0.0796 (code 8, 0.0296 away) rather than 0 (0.05).
    block = torch.tensor([[2.0, 1.0, -2.0, 0.1] + [0.0] * 60])
    tensor = QLookupTensor.quantize(block, qnf4, 64)
    assert torch.ops.quanta.unpack(tensor.codes, 4, 64)[0, :4].tolist() == [15, 12, 0, 8]


@pytest.mark.parametrize("qtype", [q for q in FORMATS if q not in (qnf4_dq, qfp4_dq)], ids=str)
def test_nan_in_a_block_is_nan_out_there_only(qtype):
    torch.manual_seed(0)
    weight = torch.randn(4, 128)
    weight[1, 5] = float("nan")
    values = quantized(weight, qtype).dequantize()
    assert values[1, :16].isnan().all()  # the block holding the NaN (16 columns or more)
    assert values[[0, 2, 3]].isfinite().all() and values[1, 64:].isfinite().all()


def test_double_quantized_nan_is_nan_out_in_its_256_blocks_only():
    # [64, 512] at group 64: 512 scales, two second-level blocks of 256 (rows 0-31, 32-63)
    torch.manual_seed(0)
    weight = torch.randn(64, 512)
    weight[1, 5] = float("nan")
    values = quantized(weight, qnf4_dq).dequantize()
    assert values[:32].isnan().all() and values[32:].isfinite().all()


def test_double_quantization_saves_memory_and_keeps_the_error():
    torch.manual_seed(0)
    weight = torch.randn(256, 1024, dtype=torch.bfloat16)
    single, double = quantized(weight, qnf4), quantized(weight, qnf4_dq)
    # 4096 scales: 2 bytes each (bfloat16) against 1 byte, plus 4 bytes per 256 and the offset
    assert single.nbytes - double.nbytes == 4096 * (2 - 1) - 4 * 4096 // 256 - 4
    single_error = relative_rms(single.dequantize(), weight.float())
    assert relative_rms(double.dequantize(), weight.float()) < single_error * 1.01


@pytest.mark.parametrize("qtype", ONE_PER_LAYOUT, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_matches_the_dequantized_weight(qtype, dtype, uniform_inputs, relative_error):
    torch.manual_seed(0)
    tensor = quantized(torch.randn(32, 128, dtype=dtype), qtype)
    x = uniform_inputs(3, 128, dtype=dtype)
    bias = torch.randn(32, dtype=dtype)
    expected = F.linear(x.float(), tensor.dequantize().float(), bias.float())
    actual = F.linear(x, tensor, bias)
    assert actual.dtype == dtype
    assert relative_error(actual, expected) < LINEAR_TOLERANCE[dtype]


@pytest.mark.parametrize("qtype", ONE_PER_LAYOUT, ids=str)
def test_moves_copies_and_pickles_keep_the_values(qtype):
    tensor = quantized(torch.randn(8, 64), qtype)
    halved = tensor.to(torch.bfloat16)
    assert (halved.dtype, halved.dequantize().dtype) == (torch.bfloat16, torch.bfloat16)
    assert torch.equal(halved.codes, tensor.codes)
    # torch.save, not pickle: torch 2.13's plain pickle cannot load float8 tensors back
    saved = io.BytesIO()
    torch.save(tensor, saved)
    saved.seek(0)
    for copied in (copy.deepcopy(tensor), torch.load(saved, weights_only=False), tensor.detach()):
        assert type(copied) is type(tensor) and copied.dtype == tensor.dtype
        assert torch.equal(copied.dequantize(), tensor.dequantize())


def test_group_sizes():
    assert ModuleConfig(weights="nf4").for_module(256, "fc").group_size == 64  # bitsandbytes'
    assert ModuleConfig(weights="nf4").for_module(96, "fc").group_size == 32  # 64 must divide K
    assert ModuleConfig(weights="fp4", group_size=128).for_module(256, "fc").group_size == 128
    assert ModuleConfig(weights="mxfp4").for_module(256, "fc").group_size == 32
    assert ModuleConfig(weights="nvfp4", group_size=16).for_module(256, "fc").group_size == 16
    with pytest.raises(ValueError, match=r"group_size=64 does not apply to quanta.qmxfp8.*=32"):
        ModuleConfig(weights="mxfp8", group_size=64)
    with pytest.raises(ValueError, match=r"group_size=32 does not apply to quanta.qnvfp4.*=16"):
        ModuleConfig(weights="nvfp4", group_size=32)
    with pytest.raises(ValueError, match=r"qmxfp4 weights need K divisible by 32.*'fc'.*K=48"):
        ModuleConfig(weights="mxfp4").for_module(48, "fc")
    with pytest.raises(ValueError, match="group_size=48 does not divide K=256"):
        ModuleConfig(weights="nf4", group_size=48).for_module(256, "fc")


def test_a_group_size_set_for_int4_is_not_inherited_by_a_fixed_block_override():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32))
    quantize(model, weights="int4", group_size=64, overrides={"1": {"weights": "mxfp4"}})
    assert (model[0].qconfig.group_size, model[1].qconfig.group_size) == (64, 32)


def test_optimizers_do_not_apply():
    with pytest.raises(ValueError, match=r"minmax.*does not apply to quanta.qnf4.*'0'"):
        quantize(nn.Sequential(nn.Linear(64, 8)), weights="nf4", optimizer="minmax")


@pytest.mark.parametrize("qtype", ONE_PER_LAYOUT, ids=str)
def test_quantize_freeze_and_state_dict_round_trip(qtype, uniform_inputs):
    torch.manual_seed(0)
    model = quantize(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)), weights=qtype)
    x = uniform_inputs(2, 64)
    with torch.no_grad():
        before = model(x)
        freeze(model)
        assert isinstance(model[0].weight, layout_for(qtype))
        assert torch.equal(model(x), before)  # frozen codes are those used on the fly
    fresh = quantize(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)), weights=qtype)
    freeze(fresh)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), before)


def test_compile_fullgraph_matches_eager(uniform_inputs):
    # one model, one compilation, every layout: nf4, nf4 double-quantized, nvfp4, mxfp8
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 32), nn.Linear(32, 16)
    )
    overrides = {"0": {"weights": "nf4"}, "2": {"weights": "nvfp4"}, "3": {"weights": "mxfp8"}}
    freeze(quantize(model, weights="nf4_dq", overrides=overrides))
    x = uniform_inputs(4, 64)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
