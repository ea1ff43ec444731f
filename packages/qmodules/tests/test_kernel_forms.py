"""A 4-bit weight's derived tinygemm form (QBitsTensor on CUDA): never stored, flattened for
torch.compile, used by the linear. On CPU the form is the CPU twin of tinygemm's layout, passed
in as torch.compile's unflatten passes it; on a CUDA device the modules build it themselves."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quanta.qkernels import cuda_layouts, reference
from quanta.qmodules import QBitsTensor, freeze, quantize
from quanta.qtypes import qint4

# tinygemm rounds its zero (8 - zero_point) * scale to bfloat16: a few bfloat16 steps.
INT4PACK_RTOL = 2e-2
# fp32 products of float8 codes (CUDA) against bfloat16-rounded dequantized operands (CPU); the
# second layer's activation codes then differ by a float8 step here and there: 1.5e-2 measured
# on CPU with quanta::linear_float8's reference in place of _scaled_mm.
FLOAT8_RTOL = 3e-2
FORM_NAMES = ["int4pack_weight", "int4pack_scales_and_zeros"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.float(), expected.float()
    return float((actual - expected).norm() / expected.norm())


def with_cpu_form(tensor: QBitsTensor) -> QBitsTensor:
    """The tensor rebuilt with tinygemm's CPU layout of itself, as unflatten would pass it."""
    form = cuda_layouts.to_int4pack(
        tensor.codes, tensor.scale, tensor.zero_point, tensor.group_size
    )
    return QBitsTensor(
        *tensor.inner_tensors().values(),
        **tensor.attributes(),
        shape=tensor.shape,
        int4pack_weight=form.weight,
        int4pack_scales_and_zeros=form.scales_and_zeros,
    )


@pytest.fixture
def weight() -> QBitsTensor:
    torch.manual_seed(0)
    float_weight = torch.randn(32, 128, dtype=torch.bfloat16)
    return with_cpu_form(QBitsTensor.quantize(float_weight, qint4, group_size=32))


def test_no_form_is_built_off_cuda():
    tensor = QBitsTensor.quantize(torch.randn(32, 128), qint4, group_size=32)
    assert tensor.int4pack_weight is None
    assert tensor.__tensor_flatten__()[0] == ["codes", "scale", "zero_point"]


def test_the_form_is_flattened_but_never_stored(weight):
    names, attributes = weight.__tensor_flatten__()
    assert names == ["codes", "scale", "zero_point", *FORM_NAMES]
    inner = {name: getattr(weight, name) for name in names}
    rebuilt = QBitsTensor.__tensor_unflatten__(inner, attributes, weight.shape, None)
    assert rebuilt.int4pack_weight is weight.int4pack_weight
    assert list(weight.inner_tensors()) == ["codes", "scale", "zero_point"]
    assert weight.nbytes == sum(t.nbytes for t in weight.inner_tensors().values())
    # torch.compile's cache tells a tensor with the form from one without
    plain = QBitsTensor(*weight.inner_tensors().values(), **weight.attributes(), shape=weight.shape)
    assert plain._stable_hash_for_caching() != weight._stable_hash_for_caching()
    for copied in (copy.deepcopy(weight), pickle.loads(pickle.dumps(weight))):
        assert copied.int4pack_weight is None  # rebuilt from the canonical parts (CPU: none)


def test_views_keep_the_form_and_copies_do_not(weight):
    # a Parameter wrap (detach) is not a second conversion; a copy or a dtype change is a new weight
    for view in (weight.detach(), nn.Parameter(weight, requires_grad=False)):
        assert view.int4pack_weight is weight.int4pack_weight
    assert weight.clone().int4pack_weight is None  # on CPU none is built
    assert weight.to(torch.float16).int4pack_weight is None


@pytest.mark.parametrize("rows", [1, 3, 100])
def test_the_linear_runs_on_the_form(weight, rows):
    input = torch.randn(rows, 128, dtype=torch.bfloat16)
    bias = torch.randn(32, dtype=torch.bfloat16)
    expected = reference.linear_affine(
        input, weight.codes, weight.scale, weight.zero_point, 4, 32, bias
    )
    with torch.no_grad():
        out = F.linear(input, weight, bias)
    assert relative_error(out, expected) < INT4PACK_RTOL


def test_gradients_take_the_op(weight):
    # tinygemm has no backward: with a gradient wanted the op (and its autograd) runs
    input = torch.randn(2, 128, dtype=torch.bfloat16, requires_grad=True)
    F.linear(input, weight).sum().backward()
    assert input.grad is not None and input.grad.shape == input.shape


def test_compile_fullgraph_through_the_form(weight):
    torch._dynamo.reset()
    input = torch.randn(2, 128, dtype=torch.bfloat16)

    def fn(x):
        return F.linear(x, weight)

    with torch.no_grad():
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(input), fn(input))


# --- on a CUDA device ----------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def int4_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    return freeze(quantize(model.to(torch.bfloat16), weights=qint4))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("rows", [1, 16, 100])
def test_a_model_moved_to_cuda_builds_and_uses_the_form(rows):
    model = int4_model()
    input = torch.randn(rows, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(input)
        model.cuda()
        assert model[0].weight.int4pack_weight is not None
        out = model(input.cuda())
    assert relative_error(out.cpu(), expected) < INT4PACK_RTOL
    state = model.state_dict()
    assert not any("int4pack" in key for key in state)
    model.cpu()
    assert model[0].weight.int4pack_weight is None


@pytest.mark.cuda
@needs_cuda
def test_w8a8_float8_runs_the_float8_product_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).to(torch.bfloat16)
    freeze(quantize(model, weights="float8", activations="float8", activations_mode="dynamic"))
    input = torch.randn(32, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(input)
        out = model.cuda()(input.cuda())
    assert relative_error(out.cpu(), expected) < FLOAT8_RTOL


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_and_compile_of_an_int4_model():
    model = int4_model().cuda()
    input = torch.randn(1, 256, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        expected = model(input)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(input)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            out = model(input)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, expected)  # cuBLAS may pick another algorithm
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(input), expected, rtol=1e-2, atol=1e-2)
