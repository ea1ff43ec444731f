"""quanta's nf4 and fp4 against bitsandbytes' own on the same weights (bitsandbytes 0.50 runs on
CPU; it is installed by `nox -s bnb` only, never a dependency of a layer)."""

import pytest
import torch

from quanta.qmodules import QLookupTensor
from quanta.qtypes import qfp4, qnf4

functional = pytest.importorskip("bitsandbytes.functional")

BLOCK = 64  # bitsandbytes' default blocksize, quanta's default group size for nf4/fp4


def bitsandbytes_codes(weight: torch.Tensor, quant_type: str) -> tuple[torch.Tensor, ...]:
    """bitsandbytes' codes [N, K] (it packs the first of two codes in the high nibble), its
    absmax per block and its dequantized weight."""
    packed, state = functional.quantize_4bit(weight, blocksize=BLOCK, quant_type=quant_type)
    pairs = packed.flatten()
    codes = torch.stack([pairs >> 4, pairs & 15], dim=-1).reshape(weight.shape)
    absmax = state.absmax.reshape(weight.shape[0], -1)
    return codes, absmax, functional.dequantize_4bit(packed, state)


# x / absmax this close to the midpoint of two table values is a tie (float32 rounding of the
# division and of bitsandbytes' thresholds)
TIE_TOLERANCE = 1e-6
# ties are rare: bfloat16 weights hit exact midpoints of the fp4 table, about 5e-4 of them
# (the codes of ±0 differ more often, with the same value)
TIE_FRACTION_BOUND = 2e-3


@pytest.mark.parametrize("qtype", [qnf4, qfp4], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_same_codes_scales_and_values_as_bitsandbytes_but_at_ties(qtype, dtype):
    """Same scales; same codes and values except where x / absmax is halfway between two table
    values: quanta takes the even code, bitsandbytes the larger magnitude, and bitsandbytes'
    fp4 gives tiny positive values the code of -0 (8) where quanta gives +0 (0), same value."""
    torch.manual_seed(0)
    weight = torch.randn(64, 512, dtype=dtype)
    codes, absmax, values = bitsandbytes_codes(weight, qtype.name.removeprefix("q"))
    ours = QLookupTensor.quantize(weight, qtype, BLOCK)
    assert torch.equal(ours.scale.float(), absmax)
    our_codes = torch.ops.quanta.unpack(ours.codes, 4, 512)
    differ = our_codes != codes
    table = torch.tensor(qtype.table)
    scaled = weight.float() / absmax.repeat_interleave(BLOCK, dim=1)
    gap = (scaled - table[our_codes.long()]).abs() - (scaled - table[codes.long()]).abs()
    assert (gap[differ].abs() < TIE_TOLERANCE).all()
    same_value = table[our_codes.long()] == table[codes.long()]
    assert (~same_value).float().mean() < TIE_FRACTION_BOUND
    assert torch.equal(ours.dequantize()[same_value], values.to(dtype)[same_value])
    if qtype is qnf4 and dtype == torch.float32:
        assert not differ.any()  # no ties at all here
