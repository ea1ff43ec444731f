"""awq(): activation-aware weight scaling folded into the op before each group of linears."""

import copy

import pytest
import torch
from torch import nn

from quanta.qcalib import awq, smooth
from quanta.qmodules import freeze, quantize

WIDTH = 64
# float32 reassociation after scaling columns by up to ~100x: well under this
FLOAT_TOLERANCE = 1e-5


class PreNormBlock(nn.Module):
    """A pre-norm block: the norm feeds two linears, `first` feeds `after_first` directly and
    `second` feeds `after_gelu` through a GELU (not foldable)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.first = nn.Linear(WIDTH, WIDTH)
        self.second = nn.Linear(WIDTH, 2 * WIDTH)
        self.after_first = nn.Linear(WIDTH, WIDTH)
        self.after_gelu = nn.Linear(2 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        gelu = nn.functional.gelu(self.second(h))
        return x + self.after_first(self.first(h)) + self.after_gelu(gelu)


def block() -> PreNormBlock:
    torch.manual_seed(0)
    model = PreNormBlock()
    with torch.no_grad():  # a few channels of the norm's output 30x larger: what AWQ protects
        model.norm.weight[:4] *= 30
        model.first.weight[4:] *= 0.1  # and a first linear whose output also has outliers
    return model.eval()


def batches(count: int = 3) -> list[torch.Tensor]:
    return [torch.randn(8, WIDTH, generator=torch.Generator().manual_seed(s)) for s in range(count)]


def float_copy(qmodel: nn.Module) -> PreNormBlock:
    """The float function of a quantized, not yet frozen block: its float weights in a plain one."""
    plain = block()
    plain.load_state_dict(qmodel.state_dict(), strict=True)
    return plain


def relative_error(output: torch.Tensor, expected: torch.Tensor) -> float:
    return float((output - expected).norm() / expected.norm())


def test_awq_keeps_the_float_function_and_lowers_the_int4_error():
    reference = block()
    qmodel = quantize(block(), weights="int4", group_size=32)
    rtn = copy.deepcopy(qmodel)
    with pytest.warns(UserWarning, match="after_gelu"):
        awq(qmodel, batches(), progress=False)
    x = torch.cat(batches())
    with torch.no_grad():
        expected = reference(x)
        folded = float_copy(qmodel)(x)
        assert relative_error(folded, expected) < FLOAT_TOLERANCE
        assert not torch.equal(qmodel.norm.weight, reference.norm.weight)  # 1/s went there
        assert not torch.equal(qmodel.first.bias, reference.first.bias)  # and into the rows
        assert torch.equal(qmodel.second.bias, reference.second.bias)
        assert torch.equal(qmodel.after_gelu.float_weight, reference.after_gelu.weight)
        errors = [relative_error(freeze(m)(x), expected) for m in (rtn, qmodel)]
    assert errors[1] < errors[0], errors


def test_awq_refuses_named_linears_it_cannot_fold():
    qmodel = quantize(block(), weights="int4", group_size=32)
    before = copy.deepcopy(qmodel.state_dict())
    with pytest.raises(ValueError, match="after_gelu"):
        awq(qmodel, batches(), include=["first", "after_gelu"], progress=False)
    for name, value in qmodel.state_dict().items():  # nothing changed
        assert torch.equal(value, before[name]), name


def test_awq_with_include_scales_only_those():
    reference = block()
    qmodel = quantize(block(), weights="int4", group_size=32)
    awq(qmodel, batches(), include="after_first", progress=False)
    assert torch.equal(qmodel.norm.weight, reference.norm.weight)
    assert not torch.equal(qmodel.first.float_weight, reference.first.weight)  # rows divided by s


def test_nan_calibration_inputs_leave_plain_rounding():
    qmodel = quantize(block(), weights="int4", group_size=32)
    data = batches()
    data[1][0, 0] = float("nan")
    with pytest.warns(UserWarning):
        awq(qmodel, data, progress=False)
    with torch.no_grad():
        output = freeze(qmodel)(torch.cat(batches()))
    assert output.isfinite().all()  # NaN inputs leave alpha at 0: plain rounding


def test_bad_arguments_are_refused():
    qmodel = quantize(block(), weights="int4", group_size=32)
    for keyword, value, error in (
        ("grid", 1, ValueError),
        ("max_tokens", 0, ValueError),
        ("grid", True, ValueError),
        ("include", 3, TypeError),
        ("progress", "yes", TypeError),
    ):
        with pytest.raises(error, match=keyword):
            awq(qmodel, batches(), **{keyword: value})
    with pytest.raises(ValueError, match="batch"):
        awq(qmodel, [])
    with pytest.raises(ValueError, match="quantize"):
        awq(block(), batches())
    with pytest.raises(ValueError, match="quantize"):
        awq(qmodel, batches(), include="nothing*")
    smoothed = quantize(block(), weights="int4", group_size=32, activations="int8")
    smooth(smoothed, batches(), progress=False)
    with pytest.raises(ValueError, match="before smooth"):
        awq(smoothed, batches())
