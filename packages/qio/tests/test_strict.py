"""Strict loading: a checkpoint that does not fit, is corrupt or unknown is refused by name,
and the model is left as it was (issue #4)."""

import json
import struct

import pytest
import torch

from quanta.qio import (
    CheckpointError,
    CheckpointMismatchError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
    load,
    save,
)
from quanta.qio import safetensors_format as format_module
from quanta.qio.safetensors_format import metadata_checksum
from quanta.qmodules import QModuleMixin, quantize

FILE = "model.safetensors"


def _header(path):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _rewrite(path, header, body):
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + body)


def _unchanged(model) -> bool:
    return not any(isinstance(m, QModuleMixin) for m in model.modules())


@pytest.fixture
def saved(tmp_path, frozen_mlp):
    save(frozen_mlp("int4", "int8"), tmp_path)
    return tmp_path


def test_errors_are_value_errors():
    for error in (CorruptCheckpointError, ChecksumMismatchError, CheckpointMismatchError):
        assert issubclass(error, CheckpointError) and issubclass(error, ValueError)
    assert issubclass(UnsupportedCheckpointError, ValueError)


def test_a_missing_key_is_named(saved, meta_mlp):
    header, body = _header(saved / FILE)
    checksums = json.loads(header["__metadata__"]["quanta.checksums"])
    entry = header.pop("fc2.bias")
    checksums.pop("fc2.bias")
    header["__metadata__"]["quanta.checksums"] = json.dumps(checksums)
    start, end = entry["data_offsets"]
    for value in header.values():  # close the gap the removed tensor leaves
        if "data_offsets" in value and value["data_offsets"][0] >= end:
            value["data_offsets"] = [o - (end - start) for o in value["data_offsets"]]
    _rewrite(saved / FILE, header, body[:start] + body[end:])
    model = meta_mlp()
    with pytest.raises(CheckpointMismatchError, match=r"missing key.*'fc2\.bias'"):
        load(saved, model, progress=False)
    assert _unchanged(model)


def test_an_unexpected_key_is_named(saved, meta_mlp):
    model = meta_mlp()
    with torch.device("meta"):
        model.fc2 = torch.nn.Linear(96, 10, bias=False)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key.*'fc2\.bias'"):
        load(saved, model, progress=False)


def test_non_strict_skips_unexpected_keys(saved, meta_mlp):
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            mlp = meta_mlp()
            self.fc1, self.norm = mlp.fc1, mlp.norm

    model = load(saved, Head(), strict=False, progress=False)
    assert model.fc1.is_frozen and not model.fc1.weight.is_meta


def test_a_shape_mismatch_names_key_and_qtype(saved):
    with torch.device("meta"):
        other = torch.nn.Module()
        other.fc1 = torch.nn.Linear(256, 64)  # the checkpoint has 96 outputs
        other.norm = torch.nn.LayerNorm(96)
        other.fc2 = torch.nn.Linear(96, 10)
    with pytest.raises(CheckpointMismatchError, match=r"'fc1\.(weight\.\w+|bias)'"):
        load(saved, other, progress=False)


def test_a_dtype_mismatch_is_refused(saved, meta_mlp):
    with pytest.raises(CheckpointMismatchError, match=r"torch\.float16"):
        load(saved, meta_mlp(torch.float16), progress=False)


def test_a_model_quantized_differently_is_refused(saved, meta_mlp):
    model = quantize(meta_mlp(), weights="int8", activations="int8")
    with pytest.raises(CheckpointMismatchError, match=r"already quantized as.*qint8"):
        load(saved, model, progress=False)
    assert model.fc1.qconfig.weights.name == "qint8"


def test_a_model_quantized_the_same_way_loads(saved, meta_mlp, frozen_mlp, inputs, as_plain):
    model = quantize(meta_mlp(), weights="int4", activations="int8")
    load(saved, model, progress=False)
    x = inputs(2, 256)
    assert torch.equal(as_plain(model(x)), as_plain(frozen_mlp("int4", "int8")(x)))


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_a_truncated_file_is_refused(saved, meta_mlp, keep):
    data = (saved / FILE).read_bytes()
    (saved / FILE).write_bytes(data[:keep])
    model = meta_mlp()
    with pytest.raises(CorruptCheckpointError, match=FILE):
        load(saved, model, progress=False)
    assert _unchanged(model)


def test_a_changed_config_fails_the_metadata_checksum(saved, meta_mlp):
    header, body = _header(saved / FILE)
    metadata = header["__metadata__"]
    metadata["quanta.config"] = metadata["quanta.config"].replace('"qint8"', '"qfloat8_e4m3fn"')
    _rewrite(saved / FILE, header, body)
    with pytest.raises(ChecksumMismatchError, match="metadata"):
        load(saved, meta_mlp(), progress=False)


def test_a_changed_byte_fails_its_checksum_unless_skipped(saved, meta_mlp):
    data = bytearray((saved / FILE).read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    (saved / FILE).write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="checksum"):
        load(saved, meta_mlp(), progress=False)
    load(saved, meta_mlp(), verify_checksums=False, progress=False)  # speed over safety


@pytest.mark.parametrize("key", ["config_version", "layout_version"])
def test_an_unknown_version_is_refused(saved, meta_mlp, key):
    header, body = _header(saved / FILE)
    config = json.loads(header["__metadata__"]["quanta.config"])
    config[key] = 99  # as a later quanta-qio would write it, checksum included
    metadata = header["__metadata__"]
    metadata["quanta.config"] = json.dumps(config)
    checksums = json.loads(metadata["quanta.checksums"])
    checksums["__metadata__"] = metadata_checksum(metadata)
    metadata["quanta.checksums"] = json.dumps(checksums)
    _rewrite(saved / FILE, header, body)
    with pytest.raises(UnsupportedCheckpointError, match=f"{key} 99"):
        load(saved, meta_mlp(), progress=False)


def test_a_plain_safetensors_file_is_not_a_quanta_checkpoint(tmp_path, meta_mlp):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file({"x": torch.zeros(2)}, tmp_path / FILE)
    with pytest.raises(UnsupportedCheckpointError, match="quanta config"):
        load(tmp_path, meta_mlp(), progress=False)


def test_missing_path_is_an_os_error(tmp_path, meta_mlp):
    with pytest.raises(OSError):
        load(tmp_path / "absent", meta_mlp(), progress=False)


def test_a_crash_while_writing_keeps_the_previous_file(saved, frozen_mlp, monkeypatch):
    before = (saved / FILE).read_bytes()
    original = format_module.save_file

    def failing(tensors, filename, metadata=None):
        original(tensors, filename, metadata)
        data = filename.read_bytes()
        filename.write_bytes(data[: len(data) // 2])  # half the data written, then the disk fills
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(format_module, "save_file", failing)
    with pytest.raises(OSError, match="simulated"):
        save(frozen_mlp("int8"), saved)
    assert (saved / FILE).read_bytes() == before
    assert [p.name for p in saved.iterdir()] == [FILE]  # no temporary file left behind


def test_saving_an_unfrozen_model_is_refused(tmp_path, float_mlp):
    with pytest.raises(ValueError, match="'fc1' is quantized but not frozen"):
        save(quantize(float_mlp(), weights="int4"), tmp_path)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"path": 3}, TypeError),
        ({"model": "model"}, TypeError),
        ({"device": 0.5}, TypeError),
        ({"device": "nowhere"}, ValueError),
        ({"device": "meta"}, ValueError),
    ],
)
def test_bad_load_arguments_fail_early(saved, meta_mlp, arguments, error):
    call = {"path": saved, "model": meta_mlp(), "device": "cpu", **arguments}
    with pytest.raises(error):
        load(call["path"], call["model"], call["device"])


@pytest.mark.parametrize(
    ("size", "error"), [("5 parsecs", ValueError), (0, ValueError), (1.5, TypeError)]
)
def test_bad_shard_sizes_fail_early(tmp_path, frozen_mlp, size, error):
    with pytest.raises(error, match="max_shard_size"):
        save(frozen_mlp("int8"), tmp_path, max_shard_size=size)
