"""quantize(..., activations=...): static and dynamic activations of the quantized modules."""

import copy
import io
import pickle
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from quanta.qmodules import (
    QActivationTensor,
    QLayerNorm,
    QLinear,
    float_activations,
    freeze,
    observe_activations,
    quantize,
)
from quanta.qtypes import qint8

# static int8 activations at calibrated scales on U(-1, 1) inputs: per-tensor rounding of the
# input and the output adds up to a few percent (measured 1-2%)
STATIC_INT8_TOLERANCE = 0.05
# dynamic per-token int8 inputs, int8 weights (measured ~0.7%)
DYNAMIC_INT8_TOLERANCE = 0.02
COMPILE_TOLERANCE = 1e-3  # as in test_compile.py: only fusion and reduction order differ
THREAD_TIMEOUT = 30  # seconds: a thread waiting longer means the test is deadlocked
UNCALIBRATED = "never calibrated"


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = self.norm(x.mean((2, 3)))
        return self.fc(x)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))


def set_scales(model: nn.Module, inputs: torch.Tensor) -> None:
    """Absmax scales from one batch, without qcalib (this layer cannot import it)."""

    def observer(module, kind, tensor):
        if kind != "quantized_output":
            getattr(module, f"{kind}_scale").copy_(
                tensor.abs().amax() / module.qconfig.activations.qmax
            )

    with observe_activations(observer), torch.no_grad():
        model(inputs)


def plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.dequantize() if isinstance(tensor, QActivationTensor) else tensor


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activations": "int4"}, "activations"),
        ({"activations": "nope"}, "activations"),
        ({"activations": "int8", "activations_mode": "lazy"}, "activations_mode"),
        ({"activations": "int8", "activations_mode": None}, "activations_mode"),
    ],
)
def test_bad_activation_arguments_are_refused_before_any_change(kwargs, match):
    model = mlp()
    with pytest.raises(ValueError, match=match):
        quantize(model, weights="int8", **kwargs)
    assert type(model[0]) is nn.Linear


def test_static_modules_hold_scale_buffers_of_one():
    model = quantize(ConvNet(), weights="int8", activations="int8")
    assert isinstance(model.norm, QLayerNorm)
    buffers = {name: tensor for name, tensor in model.named_buffers()}
    assert set(buffers) == {
        "conv.input_scale",
        "conv.output_scale",
        "norm.output_scale",
        "fc.input_scale",
        "fc.output_scale",
    }
    assert all(t.shape == () and float(t) == 1.0 for t in buffers.values())
    assert "activations=quanta.qint8 (static)" in repr(model.fc)


def test_layer_norm_is_left_alone_without_activations():
    model = quantize(ConvNet(), weights="int8")
    assert type(model.norm) is nn.LayerNorm


def test_dynamic_modules_have_no_buffers():
    model = quantize(ConvNet(), weights="int8", activations="int8", activations_mode="dynamic")
    assert dict(model.named_buffers()) == {}


@pytest.mark.parametrize("activations", ["int8", "float8_e4m3fn", "float8_e5m2"])
def test_static_linear_quantizes_input_and_output(activations, uniform_inputs, relative_error):
    model, inputs = mlp(), uniform_inputs(8, 32)
    expected = model(inputs)
    quantize(model, weights="int8", activations=activations)
    set_scales(model, inputs)
    output = model(inputs)
    assert isinstance(output, QActivationTensor)
    assert output.qtype.name.endswith(activations.replace("int8", "qint8").split("_", 1)[-1])
    assert relative_error(output.dequantize(), expected) < STATIC_INT8_TOLERANCE * 2


def test_static_int8_matches_the_emulated_reference(uniform_inputs):
    """Input and output fake-quantized at their scales around the int8-weight linear."""
    model, inputs = mlp(), uniform_inputs(8, 32)
    first = model[0]
    quantize(model, weights="int8", activations="int8")
    set_scales(model, inputs)
    scale_in, scale_out = float(first.input_scale), float(first.output_scale)
    fake_input = (inputs / scale_in).round().clamp(-128, 127) * scale_in
    raw = nn.functional.linear(fake_input, first.weight.dequantize(), first.bias)
    expected = (raw / scale_out).round().clamp(-128, 127) * scale_out
    torch.testing.assert_close(first(inputs).dequantize(), expected, rtol=0, atol=1e-6)


def test_dynamic_mode_needs_no_calibration(uniform_inputs, relative_error):
    model, inputs = mlp(), uniform_inputs(8, 32) * torch.logspace(-2, 2, 8)[:, None]
    expected = model(inputs)
    quantize(model, weights="int8", activations="int8", activations_mode="dynamic")
    output = model(inputs)
    assert type(output) is torch.Tensor
    assert relative_error(output, expected) < DYNAMIC_INT8_TOLERANCE


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_inputs_and_weights_multiply_as_int8_codes(mode, uniform_inputs):
    """W8A8 inference runs quanta::linear_int8 on the codes; training keeps the float path."""
    model, inputs = mlp(), uniform_inputs(8, 32)
    quantize(model, weights="int8", activations="int8", activations_mode=mode)
    set_scales(model, inputs)
    freeze(model)
    first = model[0]
    input = first.quantize_input(inputs)
    weight = first.weight
    expected = torch.ops.quanta.linear_int8(
        input.codes, input.scale, weight.codes, weight.scale, first.bias, inputs.dtype
    )
    with torch.no_grad():
        assert torch.equal(nn.functional.linear(input, weight, first.bias), expected)
    # with a gradient wanted (the bias), the input is dequantized instead: same values, rounded
    # differently, and the gradient reaches the bias
    output = nn.functional.linear(input, weight, first.bias)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    output.sum().backward()
    assert first.bias.grad is not None


def test_dynamic_conv_scales_are_per_pixel(uniform_inputs, relative_error):
    model = ConvNet()
    inputs = uniform_inputs(2, 3, 6, 6)
    expected = model(inputs)
    quantize(model, weights="int8", activations="int8", activations_mode="dynamic")
    assert relative_error(model(inputs), expected) < DYNAMIC_INT8_TOLERANCE * 2


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_float_dtype_and_inference_mode(mode, uniform_inputs):
    model = ConvNet().to(torch.bfloat16)
    quantize(model, weights="int8", activations="int8", activations_mode=mode)
    inputs = uniform_inputs(2, 3, 6, 6, dtype=torch.bfloat16)
    with torch.inference_mode():
        if mode == "static":
            set_scales(model, inputs)
        output = model(inputs)
    assert output.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in model.buffers())
    assert torch.isfinite(plain(output).float()).all()


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_frozen_state_dict_round_trip_is_bit_identical(mode, uniform_inputs):
    inputs = uniform_inputs(2, 3, 6, 6)
    frozen = quantize(ConvNet(), weights="int8", activations="int8", activations_mode=mode)
    if mode == "static":
        set_scales(frozen, inputs)
        frozen.fc.disable_output_quantization()  # as streamline does: the key leaves
    freeze(frozen)
    state = frozen.state_dict()
    if mode == "static":
        assert float(state["conv.input_scale"]) != 1.0 and "norm.output_scale" in state
        assert "fc.output_scale" not in state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)

    torch.manual_seed(1)  # other weights: everything must come from the state dict
    fresh = quantize(ConvNet(), weights="int8", activations="int8", activations_mode=mode)
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert fresh.fc.is_frozen
    assert fresh.fc.quantizes_output == frozen.fc.quantizes_output
    assert torch.equal(plain(fresh(inputs)), plain(frozen(inputs)))


def test_scales_saved_from_a_full_model_load_into_a_streamlined_one(uniform_inputs):
    inputs = uniform_inputs(4, 32)
    source = quantize(mlp(), weights="int8", activations="int8")
    set_scales(source, inputs)
    target = quantize(mlp(), weights="int8", activations="int8")
    target[0].disable_output_quantization()
    target.load_state_dict(source.state_dict(), strict=True)
    assert target[0].quantizes_output
    assert torch.equal(plain(target(inputs)), plain(source(inputs)))


def test_deepcopy_and_pickle_keep_scales(uniform_inputs):
    inputs = uniform_inputs(4, 32)
    model = quantize(mlp(), weights="int8", activations="int8")
    set_scales(model, inputs)
    freeze(model)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(other[0], QLinear)
        assert torch.equal(plain(other(inputs)), plain(model(inputs)))


def test_quantized_input_is_used_as_it_is(uniform_inputs):
    model = quantize(mlp(), weights="int8", activations="int8")
    inputs = uniform_inputs(4, 32)
    set_scales(model, inputs)
    hidden = model[1](model[0](inputs))
    assert isinstance(hidden, QActivationTensor)  # relu kept it quantized
    expected = nn.functional.linear(hidden.dequantize(), model[2].weight.dequantize(), None)
    raw = model[2].quantize_output  # the output path alone, on the same float result
    torch.testing.assert_close(
        model[2](hidden).dequantize(),
        raw(expected + model[2].bias).dequantize(),
        rtol=0,
        atol=float(model[2].output_scale),
    )


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_compile_fullgraph_on_a_frozen_w8a8_model(mode, uniform_inputs):
    model = quantize(ConvNet(), weights="int8", activations="int8", activations_mode=mode)
    inputs = uniform_inputs(2, 3, 6, 6)
    if mode == "static":
        set_scales(model, inputs)
    freeze(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        torch.testing.assert_close(
            plain(compiled(inputs)),
            plain(model(inputs)),
            atol=COMPILE_TOLERANCE,
            rtol=COMPILE_TOLERANCE,
        )


def test_activations_alone_leave_float_modules_untouched():
    model = quantize(mlp(), weights="int8", activations="int8", overrides={"2": {"weights": None}})
    assert isinstance(model[0], QLinear) and type(model[2]) is nn.Linear
    assert model[0].qconfig.activations == qint8


def test_float_activations_and_observers_act_on_their_own_thread_only(uniform_inputs):
    """One thread inside float_activations() and observe_activations() changes neither the
    outputs nor the scales of a model that another thread serves meanwhile."""
    inputs = uniform_inputs(8, 32)
    served = quantize(mlp(), weights="int8", activations="int8")
    set_scales(served, inputs)
    freeze(served)
    scales = {name: tensor.clone() for name, tensor in served.named_buffers()}
    with torch.inference_mode():
        expected = served(inputs).dequantize()
    other = quantize(mlp(), weights="int8", activations="int8")
    inside, served_done = threading.Event(), threading.Event()
    float_output = []

    def overwrite(module, kind, tensor):  # an observer that rewrites every scale it sees
        if kind != "quantized_output":
            getattr(module, f"{kind}_scale").fill_(3.0)

    def measure():
        with torch.inference_mode(), observe_activations(overwrite):
            other(inputs)  # observed in this thread
            with float_activations():
                inside.set()
                assert served_done.wait(THREAD_TIMEOUT)
                float_output.append(other(inputs))

    def serve():
        assert inside.wait(THREAD_TIMEOUT)
        try:
            with torch.inference_mode():
                for _ in range(5):
                    assert torch.equal(served(inputs).dequantize(), expected)
        finally:
            served_done.set()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for task in [pool.submit(measure), pool.submit(serve)]:
            task.result(timeout=THREAD_TIMEOUT)  # raises what the thread raised
    assert all(torch.equal(scales[name], tensor) for name, tensor in served.named_buffers())
    # the measuring thread was observed and did run in float
    assert float(other[0].input_scale) == 3.0 and type(float_output[0]) is torch.Tensor
    with torch.inference_mode():
        assert torch.equal(served(inputs).dequantize(), expected)


def test_uncalibrated_static_activations_warn_once_per_module(uniform_inputs):
    model = quantize(mlp(), weights="int8", activations="int8")
    inputs = uniform_inputs(4, 32)
    with pytest.warns(UserWarning, match=UNCALIBRATED) as caught:
        model(inputs)
    messages = [str(w.message) for w in caught if UNCALIBRATED in str(w.message)]
    # one text, so that Python's default filter shows it once for a whole model
    assert len(messages) == 2 and messages[0] == messages[1]
    assert "quanta.qcalib.Calibration" in messages[0] and "dynamic" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(inputs)  # once per module


def test_scales_set_by_an_observer_or_a_load_do_not_warn(uniform_inputs):
    inputs = uniform_inputs(4, 32)
    observed = quantize(mlp(), weights="int8", activations="int8")

    def keep_one(module, kind, tensor):  # calibrated, and 1.0 happens to be the result
        pass

    calibrated = quantize(mlp(), weights="int8", activations="int8")
    set_scales(calibrated, inputs)
    loaded = quantize(mlp(), weights="int8", activations="int8")
    loaded.load_state_dict(calibrated.state_dict())
    dynamic = quantize(mlp(), weights="int8", activations="int8", activations_mode="dynamic")
    measured = quantize(mlp(), weights="int8", activations="int8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with observe_activations(keep_one):
            observed(inputs)
        for model in (observed, calibrated, loaded, dynamic):
            model(inputs)
        with float_activations():
            measured(inputs)  # the scales are not used: no warning, and the check waits
    with pytest.warns(UserWarning, match=UNCALIBRATED):
        measured(inputs)
