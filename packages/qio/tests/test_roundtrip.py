"""save -> load onto a meta-built model gives a model with identical outputs (issue #4)."""

import json

import pytest
import torch

from quanta.qio import load, save
from quanta.qmodules import (
    MinmaxOptimizer,
    QTensor,
    WeightOptimizer,
    WeightParts,
    freeze,
    quantize,
)
from quanta.qtypes import PACKED_AFFINE

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
WEIGHTS = ["int2", "int4", "int8", "fp8"]
ACTIVATIONS = [None, "int8"]


@pytest.mark.parametrize("activations", ACTIVATIONS)
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_meta_model_loads_to_identical_outputs(
    tmp_path, frozen_mlp, meta_mlp, inputs, as_plain, dtype, weights, activations
):
    model = frozen_mlp(weights, activations, dtype)
    save(model, tmp_path)
    loaded = load(tmp_path, meta_mlp(dtype), progress=False)
    x = inputs(8, 256, dtype=dtype)
    with torch.inference_mode():
        assert torch.equal(as_plain(loaded(x)), as_plain(model(x)))
    assert isinstance(loaded.fc1._parameters["weight"], QTensor)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])


def test_float_model_is_quantized_in_place_and_returned(
    tmp_path, frozen_mlp, float_mlp, inputs, as_plain
):
    model = frozen_mlp("int4", "int8")
    save(model, tmp_path)
    target = float_mlp()  # float weights, different values: all must come from the file
    assert load(tmp_path, target, progress=False) is target
    x = inputs(4, 256)
    assert torch.equal(as_plain(target(x)), as_plain(model(x)))


def test_loaded_tensors_do_not_map_the_file(tmp_path, frozen_mlp, meta_mlp):
    model = frozen_mlp("int4", "int8")
    save(model, tmp_path)
    loaded = load(tmp_path, meta_mlp(), progress=False)
    file = tmp_path / "model.safetensors"
    file.write_bytes(bytes(file.stat().st_size))  # the file changed in place after loading
    state = model.state_dict()
    assert all(torch.equal(tensor, state[key]) for key, tensor in loaded.state_dict().items())


def test_saved_files_are_ordinary_files(tmp_path, frozen_mlp):
    save(frozen_mlp("int8"), tmp_path, max_shard_size="10KB")
    assert {path.stat().st_mode & 0o777 for path in tmp_path.iterdir()} == {0o644}


@pytest.mark.parametrize(
    "options",
    [{"activations_mode": "dynamic"}, {"group_size": 32}, {"exclude": "fc2"}],
    ids=["dynamic", "group32", "exclude"],
)
def test_quantization_settings_round_trip(
    tmp_path, frozen_mlp, meta_mlp, inputs, as_plain, options
):
    model = frozen_mlp("int4", "int8", **options)
    save(model, tmp_path)
    loaded = load(tmp_path, meta_mlp(), progress=False)
    x = inputs(4, 256)
    assert torch.equal(as_plain(loaded(x)), as_plain(model(x)))
    assert repr(loaded) == repr(model)


def test_streamlined_output_stays_float(tmp_path, frozen_mlp, meta_mlp, inputs, as_plain):
    model = frozen_mlp("int8", "int8")
    model.fc1.disable_output_quantization()
    save(model, tmp_path)
    loaded = load(tmp_path, meta_mlp(), progress=False)
    assert not loaded.fc1.quantizes_output and "fc1.output_scale" not in loaded.state_dict()
    x = inputs(4, 256)
    assert torch.equal(as_plain(loaded(x)), as_plain(model(x)))


def test_files_carry_the_versioned_config_and_a_checksum_per_tensor(tmp_path, frozen_mlp):
    safetensors = pytest.importorskip("safetensors")
    save(frozen_mlp("int4", "int8"), tmp_path)
    with safetensors.safe_open(
        tmp_path / "model.safetensors", "pt"
    ) as file:  # the reference reader
        metadata, keys = file.metadata(), set(file.keys())
    config = json.loads(metadata["quanta.config"])
    assert config["config_version"] == 1 and config["layout_version"] == 1
    assert config["modules"]["fc1"] == {
        "weights": "qint4",
        "group_size": 128,
        "axis": 0,
        "float_zero_point": False,
        "optimizer": None,
        "activations": "qint8",
        "activations_mode": "static",
        "output_quantized": True,
        "input_smoothing": False,
        "input_rotation": None,
    }
    assert config["modules"]["norm"]["weights"] is None
    assert set(json.loads(metadata["quanta.checksums"])) == {*keys, "__metadata__"}
    assert {"fc1.weight.codes", "fc1.input_scale", "norm.output_scale"} <= keys


def test_load_to_a_device_without_the_float_weights(tmp_path, frozen_mlp, meta_mlp):
    save(frozen_mlp("int4"), tmp_path)
    loaded = load(tmp_path, meta_mlp(), device=torch.device("cpu"), progress=False)
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())


@pytest.mark.cuda
def test_load_straight_onto_cuda(tmp_path, frozen_mlp, meta_mlp, inputs, as_plain):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = frozen_mlp("int4", "int8")
    save(model, tmp_path)
    loaded = load(tmp_path, meta_mlp(), device="cuda", progress=False)
    assert all(t.is_cuda for t in loaded.state_dict().values())
    x = inputs(4, 256)
    assert torch.equal(as_plain(loaded(x.cuda())).cpu(), as_plain(loaded.cpu()(x)))


class FloatZeroPoint(WeightOptimizer):
    """Min-max parts with float zero points, as HQQ stores them."""

    name = "float-zero-point"
    float_zero_point = True

    layouts = (PACKED_AFFINE,)

    def optimize(self, weight, qtype, group_size, module=None):
        parts = MinmaxOptimizer().optimize(weight, qtype, group_size, module)
        return WeightParts(parts.codes, parts.scale, parts.zero_point.to(parts.scale.dtype) + 0.25)


def test_float_zero_points_round_trip(tmp_path, frozen_mlp, meta_mlp, inputs, as_plain):
    model = frozen_mlp("int4", optimizer=FloatZeroPoint())
    assert model.fc1.weight.zero_point.dtype == torch.float32
    save(model, tmp_path)
    loaded = load(tmp_path, meta_mlp(), progress=False)
    x = inputs(4, 256)
    assert torch.equal(as_plain(loaded(x)), as_plain(model(x)))


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("weights", ["int4", "fp8"])
def test_conv2d_round_trip(tmp_path, inputs, weights):
    torch.manual_seed(0)
    model = freeze(quantize(ConvNet(), weights=weights))
    save(model, tmp_path)
    with torch.device("meta"):
        skeleton = ConvNet()
    loaded = load(tmp_path, skeleton, progress=False)
    x = inputs(2, 3, 6, 6)
    assert torch.equal(loaded(x), model(x))


# every block layout in bfloat16; float32 where the layout keeps its dtype apart from its scales
BLOCK_FORMATS = [
    *((weights, torch.bfloat16) for weights in ("nf4", "fp4", "nf4_dq", "mxfp4", "nvfp4", "mxfp8")),
    *(("nf4", torch.float32), ("nf4_dq", torch.float32), ("mxfp4", torch.float32)),
]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8)


@pytest.mark.parametrize(("weights", "dtype"), BLOCK_FORMATS, ids=str)
def test_block_formats_round_trip_bit_identically(
    tmp_path, frozen_mlp, meta_mlp, inputs, dtype, weights
):
    model = frozen_mlp(weights, dtype=dtype)
    save(model, tmp_path)
    loaded = load(tmp_path, meta_mlp(dtype), progress=False)
    for name in ("fc1", "fc2"):
        saved, read = getattr(model, name).weight, getattr(loaded, name).weight
        assert (type(read), read.dtype, read.qtype) == (type(saved), dtype, saved.qtype)
        for part, tensor in saved.inner_tensors().items():
            assert torch.equal(_bits(read.inner_tensors()[part]), _bits(tensor)), part
    x = inputs(4, 256, dtype=dtype)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
