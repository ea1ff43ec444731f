"""Calibration: exact EMA semantics for input and output scales, streamline and debug."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from quanta.qcalib import Calibration
from quanta.qmodules import QActivationTensor, freeze, quantize
from quanta.qtypes import qfloat8_e4m3fn, qint8

THREAD_TIMEOUT = 30  # seconds: a thread waiting longer means the test is deadlocked


def batch(scale: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(8, 16, generator=generator) * 2 - 1) * scale


def single_linear(activations=qint8) -> nn.Sequential:
    torch.manual_seed(0)
    return quantize(nn.Sequential(nn.Linear(16, 8)), weights="int8", activations=activations)


def raw_output(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The float output the module's output scale is calibrated on (its input quantized)."""
    quantized_input = module.quantize_input(inputs)
    return nn.functional.linear(
        quantized_input.dequantize(), module.weight.dequantize(), module.bias
    )


@pytest.mark.parametrize("activations", [qint8, qfloat8_e4m3fn])
def test_momentum_is_honoured_for_input_and_output_scales(activations):
    model = single_linear(activations)
    linear, qmax = model[0], activations.qmax
    assert float(linear.input_scale) == 1.0 and float(linear.output_scale) == 1.0
    first, second = batch(1.0, 1), batch(3.0, 2)
    with torch.no_grad(), Calibration(momentum=0.5, streamline=False):
        model(first)
        input_1 = first.abs().max() / qmax
        output_1 = raw_output(linear, first).abs().max() / qmax
        # exactly max|x| / qmax after the first batch
        assert torch.equal(linear.input_scale, input_1)
        assert torch.equal(linear.output_scale, output_1)
        model(second)
    # the second batch's input is quantized with the already updated input scale
    expected_input = 0.5 * input_1 + 0.5 * second.abs().max() / qmax
    assert torch.equal(linear.input_scale, expected_input)
    output_2 = raw_output(linear, second).abs().max() / qmax
    assert torch.equal(linear.output_scale, 0.5 * output_1 + 0.5 * output_2)


def test_default_momentum_is_point_nine_and_scales_persist_across_blocks():
    model = single_linear()
    first, second = batch(1.0, 1), batch(2.0, 2)
    with torch.inference_mode():
        with Calibration(streamline=False):
            model(first)
        with Calibration(streamline=False):
            model(second)
    expected = 0.9 * (first.abs().max() / 127) + 0.1 * (second.abs().max() / 127)
    assert torch.equal(model[0].input_scale, expected)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_bad_momentum_is_refused(momentum):
    with pytest.raises(ValueError, match="momentum"):
        Calibration(momentum=momentum)


def test_bad_flags_are_refused():
    with pytest.raises(TypeError, match="streamline"):
        Calibration(streamline="yes")
    with pytest.raises(TypeError, match="momentum"):
        Calibration(momentum=True)


class Attention(nn.Module):
    """Scores and values from quantized projections; the output goes to a residual add."""

    def __init__(self):
        super().__init__()
        self.query = nn.Linear(16, 16)
        self.key = nn.Linear(16, 16)
        self.value = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        q = self.query(x).view(2, 4, 2, 8).transpose(1, 2)
        k = self.key(x).view(2, 4, 2, 8).transpose(1, 2)
        v = self.value(x).view(2, 4, 2, 8).transpose(1, 2)
        probabilities = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        context = (probabilities @ v).transpose(1, 2).reshape(2, 4, 16)
        return x + self.out(context)


def test_streamline_keeps_outputs_with_quantized_consumers_only():
    torch.manual_seed(0)
    model = quantize(Attention(), weights="int8", activations="int8")
    inputs = torch.randn(2, 4, 16)
    with torch.no_grad(), Calibration():
        model(inputs)
    assert model.query.quantizes_output and model.key.quantizes_output
    # the scores are float, so are their softmax: probabilities @ v consumes v as a float
    assert not model.value.quantizes_output
    assert not model.out.quantizes_output  # consumed by the residual add
    assert "out.output_scale" not in model.state_dict()
    assert float(model.out.input_scale) != 1.0


def test_without_streamline_every_output_stays_quantized():
    model = single_linear()
    with torch.no_grad(), Calibration(streamline=False):
        model(batch(1.0, 1))
    assert isinstance(model(batch(1.0, 1)), QActivationTensor)


def test_streamline_drops_an_output_returned_to_the_caller():
    model = single_linear()
    with torch.no_grad(), Calibration():
        model(batch(1.0, 1))
    assert type(model(batch(1.0, 1))) is torch.Tensor


def test_an_exception_inside_changes_no_output_quantization():
    model = single_linear()
    with pytest.raises(RuntimeError, match="stop"), torch.no_grad(), Calibration():
        model(batch(1.0, 1))
        raise RuntimeError("stop")
    assert model[0].quantizes_output


def test_debug_reports_per_module_ranges(capsys):
    model = single_linear()
    inputs = batch(2.0, 1)
    with torch.no_grad(), Calibration(streamline=False, debug=True) as calibration:
        model(inputs)
    ranges = calibration.ranges["0"]
    assert ranges["input"].maximum == pytest.approx(float(inputs.max()))
    assert ranges["input"].minimum == pytest.approx(float(inputs.min()))
    assert ranges["output"].scale == pytest.approx(float(model[0].output_scale), rel=1e-6)
    printed = capsys.readouterr().out
    assert "0: input [" in printed and "output [" in printed


def test_calibrated_frozen_model_stays_close_to_float():
    torch.manual_seed(0)
    reference = Attention()
    model = quantize(Attention(), weights="int8", activations="int8")
    model.load_state_dict(reference.state_dict(), strict=False)
    samples = [torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    with torch.no_grad(), Calibration():
        for sample in samples:
            model(sample)
    freeze(model)
    inputs = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        error = (model(inputs) - reference(inputs)).norm() / reference(inputs).norm()
    assert float(error) < 0.05  # softmax probabilities at 1/127 steps dominate (~2% measured)


def test_non_finite_values_are_left_out_of_the_scales_with_one_warning():
    model = single_linear()
    linear = model[0]
    first = batch(1.0, 1)
    first[0, 0], first[1, 3], first[2, 5] = float("nan"), float("inf"), -float("inf")
    finite_scale = first[torch.isfinite(first)].abs().max() / qint8.qmax
    with (
        pytest.warns(UserWarning, match=r"NaN/Inf activations of 0 \(input\)") as caught,
        torch.no_grad(),
        Calibration(momentum=0.5, streamline=False),
    ):
        model(first)
        assert torch.equal(linear.input_scale, finite_scale)
        model(torch.full((8, 16), float("nan")))
        assert torch.equal(linear.input_scale, finite_scale)  # no finite value: unchanged
    assert len([w for w in caught if "NaN/Inf" in str(w.message)]) == 1  # once per block
    assert torch.isfinite(linear.output_scale)
    assert freeze(model) is model  # finite scales: accepted


def test_calibrating_in_one_thread_leaves_a_model_served_by_another_bit_identical():
    """Thread A serves a frozen, calibrated W8A8 model while thread B calibrates another."""
    inputs = batch(1.0, 7)
    served = single_linear()
    with torch.no_grad(), Calibration():
        served(batch(1.0, 1))
    freeze(served)
    scales = {name: tensor.clone() for name, tensor in served.named_buffers()}
    with torch.no_grad():
        expected = served(inputs)
    other = single_linear()
    calibrating, served_done = threading.Event(), threading.Event()

    def calibrate():  # thread B
        with torch.no_grad(), Calibration(momentum=0.5):
            other(batch(30.0, 2))
            calibrating.set()
            assert served_done.wait(THREAD_TIMEOUT)
            other(batch(50.0, 3))

    def serve():  # thread A, all its forwards while B is inside its Calibration block
        assert calibrating.wait(THREAD_TIMEOUT)
        try:
            with torch.no_grad():
                for _ in range(10):
                    assert torch.equal(served(inputs), expected)
                    buffers = dict(served.named_buffers())
                    assert all(torch.equal(buffers[name], scales[name]) for name in scales)
        finally:
            served_done.set()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for task in [pool.submit(calibrate), pool.submit(serve)]:
            task.result(timeout=THREAD_TIMEOUT)  # raises what the thread raised
    assert float(other[0].input_scale) > 0.1  # B did calibrate its own model
