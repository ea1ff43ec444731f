"""optimum-quanto checkpoints (quanto_qmap.json + its key names) load with quanto's outputs.

optimum-quanto is a test-only dependency; these tests skip without it.
"""

import json
import warnings

import pytest
import torch
from torch import nn

from quanta.qio import CheckpointMismatchError, CorruptCheckpointError, load

quanto = pytest.importorskip("optimum.quanto")
safetensors_torch = pytest.importorskip("safetensors.torch")

# Both sides compute the same products in fp32 but round differently (quanto dequantizes 2/4-bit
# weights as scale * code - shift, quanta as (code - shift / scale) * scale): ~1e-6 apart.
MAX_RELATIVE_ERROR = 1e-5
# With int8 activations, a 2/4-bit weight's last-bit difference can move one output activation
# across a rounding boundary: one code of 127 on one element (measured 1.8e-3).
MAX_RELATIVE_ERROR_INT4_INT8_ACTIVATIONS = 1e-2


def net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(256, 96), nn.ReLU(), nn.Linear(96, 300), nn.GELU(), nn.Linear(300, 8)
    )


def _quanto_checkpoint(folder, weights, activations, inputs):
    """A model quantized, calibrated and frozen by optimum-quanto, saved as its docs show."""
    torch.manual_seed(0)
    model = net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quanto.quantize(model, weights=weights, activations=activations)
        if activations is not None:
            with quanto.Calibration():
                model(inputs)
        quanto.freeze(model)
    safetensors_torch.save_file(model.state_dict(), folder / "model.safetensors")
    (folder / "quanto_qmap.json").write_text(json.dumps(quanto.quantization_map(model)))


def _quanto_reloaded(folder):
    """The same files reloaded by optimum-quanto itself: the outputs it gives for them."""
    with torch.device("meta"):
        model = net()
    qmap = json.loads((folder / "quanto_qmap.json").read_text())
    state = safetensors_torch.load_file(folder / "model.safetensors")
    quanto.requantize(model, state, qmap, device=torch.device("cpu"))
    return model


def _relative_error(actual, expected):
    return float((actual - expected).norm() / expected.norm())


@pytest.mark.parametrize(
    ("weights", "activations", "tolerance"),
    [
        ("qint4", None, MAX_RELATIVE_ERROR),
        ("qint8", None, MAX_RELATIVE_ERROR),
        ("qfloat8", None, MAX_RELATIVE_ERROR),
        ("qint8", "qint8", MAX_RELATIVE_ERROR),
        ("qfloat8", "qint8", MAX_RELATIVE_ERROR),
        ("qint4", "qint8", MAX_RELATIVE_ERROR_INT4_INT8_ACTIVATIONS),
    ],
)
def test_quanto_checkpoint_gives_quanto_outputs(
    tmp_path, inputs, as_plain, weights, activations, tolerance
):
    x = inputs(16, 256)
    _quanto_checkpoint(tmp_path, weights, activations, x)
    with torch.device("meta"):
        skeleton = net()
    model = load(tmp_path, skeleton, progress=False)
    with torch.inference_mode():
        expected = as_plain(_quanto_reloaded(tmp_path)(x))
        error = _relative_error(as_plain(model(x)), expected)
    print(
        f"optimum-quanto {weights} weights, {activations} activations: relative error {error:.2e}"
    )
    assert error <= tolerance


def test_quanto_group_size_comes_from_the_scales(tmp_path, inputs):
    _quanto_checkpoint(tmp_path, "qint4", None, inputs(4, 256))
    with torch.device("meta"):
        model = load(tmp_path, net(), progress=False)
    assert model[0].qconfig.group_size == 128  # K=256: quanto's default group of 128
    assert model[2].qconfig.group_size == 96  # K=96 <= 128: one group per row (per axis)


def test_quanto_checkpoint_for_another_model_is_refused(tmp_path, inputs):
    _quanto_checkpoint(tmp_path, "qint8", None, inputs(4, 256))
    with torch.device("meta"):
        other = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 300), nn.GELU())
    with pytest.raises(CheckpointMismatchError, match=r"'0\.weight\._data'"):
        load(tmp_path, other, progress=False)


@pytest.mark.parametrize(
    ("key", "canonical"),
    [("0.weight._scale", "0.weight.scale"), ("2.input_scale", "2.input_scale")],
)
def test_quanto_nan_scales_are_refused(tmp_path, inputs, key, canonical):
    _quanto_checkpoint(tmp_path, "qint4", "qint8", inputs(4, 256))
    state = safetensors_torch.load_file(tmp_path / "model.safetensors")
    state[key] = torch.full_like(state[key], float("nan"))
    safetensors_torch.save_file(state, tmp_path / "model.safetensors")
    with torch.device("meta"):
        skeleton = net()
    with pytest.raises(CorruptCheckpointError, match=rf"scale '{canonical}' of module"):
        load(tmp_path, skeleton, progress=False)
