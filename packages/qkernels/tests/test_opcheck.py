"""torch.library.opcheck on every op: schema, fake kernel, autograd registration, AOT dispatch."""

import pytest
import torch

import quanta.qkernels


def op_samples(device):
    u8, f32, bf16 = torch.uint8, torch.float32, torch.bfloat16
    x = torch.randn(4, 32, device=device)
    row_scale = torch.rand(4, 1, device=device) + 0.01
    group_scale = torch.rand(4, 2, device=device) + 0.01
    group_zero = torch.randint(0, 16, (4, 2), dtype=u8, device=device)
    codes4 = torch.randint(0, 16, (4, 32), dtype=u8, device=device)
    int8_codes = torch.randint(-127, 128, (4, 32), dtype=torch.int8, device=device)
    packed4 = torch.ops.quanta.pack(codes4, 4)
    grad_x = torch.randn(2, 3, 32, device=device, requires_grad=True)
    table = torch.linspace(-1, 1, 16, device=device)
    e4m3_scale = group_scale.to(torch.float8_e4m3fn)
    e8m0_scale = group_scale.to(torch.float8_e8m0fnu)
    e4m3_codes = torch.randn(4, 32, device=device).to(torch.float8_e4m3fn)
    bias = torch.randn(4, device=device, requires_grad=True)
    return {
        "quantize_lut4": [(x, table, group_scale, 16), (x.to(bf16), table, e8m0_scale, 16)],
        "dequantize_lut4": [
            (codes4, table, group_scale, 16, bf16),
            (codes4, table, group_scale.to(torch.float8_e4m3fn), 16, f32),
        ],
        "linear_lut4": [
            (x, packed4, table, e4m3_scale, 16, None),
            (grad_x, packed4, table, group_scale.clone().requires_grad_(), 16, bias),
        ],
        "dequantize_grouped": [
            (int8_codes, group_scale, 16, f32),
            (e4m3_codes, e8m0_scale, 16, bf16),
        ],
        "linear_grouped": [
            (x, e4m3_codes, e4m3_scale, 16, None),
            (grad_x, int8_codes, group_scale.clone().requires_grad_(), 16, bias),
        ],
        "quantize_symmetric": [(x, row_scale, torch.int8), (x, row_scale, torch.float8_e4m3fn)],
        "dequantize_symmetric": [(int8_codes, row_scale, torch.bfloat16)],
        "quantize_dynamic": [(x, torch.int8), (x.to(bf16), torch.float8_e4m3fn)],
        "quantize_affine": [(x, group_scale, group_zero, 4, 16)],
        "dequantize_affine": [(codes4, group_scale, group_zero.float(), 16, torch.float16)],
        "pack": [(codes4, 4), (codes4[:, :7] % 4, 2)],
        "unpack": [(packed4, 4, 32), (torch.ops.quanta.pack(codes4[:, :7] % 4, 2), 2, 7)],
        "linear_symmetric": [
            (x, int8_codes, row_scale, None),
            (grad_x, int8_codes, row_scale, bias),
        ],
        "linear_int8": [
            (int8_codes[:3], torch.rand(3, 1, device=device), int8_codes, row_scale, None, f32),
            (int8_codes, torch.tensor(0.5, device=device), int8_codes, row_scale, bias, bf16),
        ],
        "linear_float8": [
            (e4m3_codes[:3], torch.rand(3, 1, device=device), e4m3_codes, row_scale, None, bf16),
            (
                e4m3_codes,
                torch.tensor(0.5, device=device),
                e4m3_codes,
                row_scale,
                bias.detach(),
                f32,
            ),
        ],
        "linear_affine": [
            (x, packed4, group_scale, group_zero, 4, 16, None),
            (
                grad_x,
                packed4,
                group_scale.clone().requires_grad_(),
                group_zero.float(),
                4,
                16,
                bias,
            ),
        ],
    }


def test_every_op_has_samples():
    assert sorted(op_samples("cpu")) == sorted(quanta.qkernels.OPS)


# opcheck's schema check compares inputs with ops that torch lacks for float8 tensors on CPU.
WITHOUT_SCHEMA_CHECK = (
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_dynamic",
)
EVERY_CHECK = ("test_schema", *WITHOUT_SCHEMA_CHECK)


def has_float8(args) -> bool:
    return any(
        isinstance(a, torch.Tensor) and a.dtype.itemsize == 1 and a.is_floating_point()
        for a in args
    )


@pytest.mark.parametrize("name", quanta.qkernels.OPS)
def test_opcheck(device, name):
    op = getattr(torch.ops.quanta, name).default
    for args in op_samples(device)[name]:
        test_utils = WITHOUT_SCHEMA_CHECK if has_float8(args) else EVERY_CHECK
        torch.library.opcheck(op, args, test_utils=test_utils)
