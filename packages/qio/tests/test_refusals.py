"""What save and load refuse (issue #16): folders holding another tool's checkpoint, dangling
links, non-regular files, empty indexes, missing shards, oversized headers, NaN or Inf scales."""

import json
import os
import signal
import struct
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from quanta.qio import CorruptCheckpointError, load, save
from quanta.qio.safetensors_format import write_safetensors

INDEX = "model.safetensors.index.json"
FILE = "model.safetensors"


def _transformers_folder(folder) -> dict[str, bytes]:
    """A float checkpoint with Transformers' names and no quanta config, and its other files."""
    folder.mkdir(exist_ok=True)
    save_file({"w": torch.ones(4)}, folder / FILE, {"format": "pt"})
    for i in (1, 2):
        save_file({f"w{i}": torch.ones(4)}, folder / f"model-0000{i}-of-00002.safetensors")
    weight_map = {
        "w1": "model-00001-of-00002.safetensors",
        "w2": "model-00002-of-00002.safetensors",
    }
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text("{}")
    return _contents(folder)


def _contents(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize("present", [FILE, INDEX, "model-00002-of-00002.safetensors"])
def test_a_folder_with_another_tools_checkpoint_is_refused_before_writing(
    tmp_path, frozen_mlp, present
):
    before = _transformers_folder(tmp_path)
    for name in set(before) - {present, "config.json", "tokenizer.json"}:
        (tmp_path / name).unlink()
    before = _contents(tmp_path)
    with pytest.raises(ValueError, match=rf"{present} was not written by quanta.*overwrite=True"):
        save(frozen_mlp("int8"), tmp_path, max_shard_size="10KB")
    assert _contents(tmp_path) == before


def test_overwrite_replaces_only_the_checkpoint_files(tmp_path, frozen_mlp, meta_mlp, inputs):
    before = _transformers_folder(tmp_path)
    model = frozen_mlp("int8")
    save(model, tmp_path, overwrite=True)
    after = _contents(tmp_path)
    assert set(after) == {FILE, "config.json", "tokenizer.json"}
    assert after["config.json"] == before["config.json"]
    assert after["tokenizer.json"] == before["tokenizer.json"]
    x = inputs(2, 256)
    assert torch.equal(load(tmp_path, meta_mlp(), progress=False)(x), model(x))


def test_quanta_saves_replace_each_other_without_overwrite(tmp_path, frozen_mlp):
    save(frozen_mlp("int8"), tmp_path, max_shard_size="10KB")
    save(frozen_mlp("int4"), tmp_path)
    save(frozen_mlp("int8"), tmp_path, max_shard_size="10KB")


def test_saving_into_a_dangling_link_says_so(tmp_path, frozen_mlp):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"symbolic link to .*nowhere.*does not exist"):
        save(frozen_mlp("int8"), link)


def _unblock_readers(fifo, report: int) -> None:
    """In a forked process (a blocked open holds the GIL): open `fifo` for writing whenever a
    reader waits on it, which lets the reader go on at end of file, and report it."""
    while True:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            os.write(report, b"opened")
        except OSError:  # ENXIO: no reader
            time.sleep(0.01)


def test_a_fifo_is_refused_without_opening_it(tmp_path, meta_mlp):
    os.mkfifo(tmp_path / FILE)
    reports, report = os.pipe()
    watcher = os.fork()
    if watcher == 0:
        _unblock_readers(tmp_path / FILE, report)
    try:
        for path in (tmp_path, tmp_path / FILE):
            with pytest.raises(CorruptCheckpointError, match=f"{FILE}: not a regular file"):
                load(path, meta_mlp(), progress=False)
    finally:
        os.kill(watcher, signal.SIGKILL)
        os.waitpid(watcher, 0)
        os.close(report)
    assert os.read(reports, 100) == b""
    os.close(reports)


@pytest.fixture
def sharded(tmp_path, frozen_mlp):
    save(frozen_mlp("int8"), tmp_path, max_shard_size="10KB")
    return tmp_path


def test_an_index_without_weights_is_refused(sharded, meta_mlp):
    index = json.loads((sharded / INDEX).read_text())
    (sharded / INDEX).write_text(json.dumps({**index, "weight_map": {}}))
    with pytest.raises(CorruptCheckpointError, match=f"{INDEX}: the index's weight_map is empty"):
        load(sharded, meta_mlp(), progress=False)


def test_a_missing_shard_is_named(sharded, meta_mlp):
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CorruptCheckpointError, match=rf"{shard.name}: named by .*{INDEX} but miss"):
        load(sharded, meta_mlp(), progress=False)


def test_an_oversized_header_is_refused_before_it_is_parsed(tmp_path, meta_mlp):
    entry = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    header = json.dumps({f"t{i:0>1000}": entry for i in range(9_500)}).encode()  # 9.6 MB
    (tmp_path / FILE).write_bytes(struct.pack("<Q", len(header)) + header)
    start = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match=rf"{FILE}: a header of \d+ bytes for 0"):
        load(tmp_path, meta_mlp(), progress=False)
    assert time.perf_counter() - start < 1.0  # parsing it takes seconds (29 s for 58 MB)


def _poison(path, key, value):
    """Rewrite the checkpoint file with `key` set to `value` everywhere, checksums renewed."""
    tensors = load_file(path)
    tensors[key] = torch.full_like(tensors[key], value)
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        metadata = json.loads(file.read(length))["__metadata__"]
    del metadata["quanta.checksums"]
    write_safetensors(path, tensors, metadata)


@pytest.mark.parametrize(
    ("key", "value"),
    [("fc1.weight.scale", float("nan")), ("fc2.input_scale", float("inf"))],
)
def test_a_nan_or_inf_scale_is_refused_by_load(tmp_path, frozen_mlp, meta_mlp, key, value):
    save(frozen_mlp("int4", "int8"), tmp_path)
    _poison(tmp_path / FILE, key, value)
    module = key.split(".")[0]
    with pytest.raises(CorruptCheckpointError, match=rf"scale '{key}' of module '{module}'"):
        load(tmp_path, meta_mlp(), progress=False)


@pytest.mark.parametrize(
    ("weights", "key"),
    [
        ("mxfp4", "fc1.weight.scale"),
        ("nvfp4", "fc1.weight.scale"),
        ("nvfp4", "fc2.weight.tensor_scale"),
        ("nf4_dq", "fc1.weight.scale_scale"),
    ],
)
def test_a_nan_block_format_scale_is_refused_by_load_and_save(
    tmp_path, frozen_mlp, meta_mlp, weights, key
):
    """e8m0 and e4m3 scales hold NaN too (torch.isfinite calls an e8m0 NaN finite)."""
    model = frozen_mlp(weights)
    save(model, tmp_path)
    _poison(tmp_path / FILE, key, float("nan"))
    module = key.split(".")[0]
    with pytest.raises(CorruptCheckpointError, match=rf"scale '{key}' of module '{module}'"):
        load(tmp_path, meta_mlp(), progress=False)
    part = getattr(getattr(model, module).weight, key.split(".")[-1])
    part.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=rf"module '{module}': its scale '{key}' holds NaN"):
        save(model, tmp_path / "out")


def test_float_weights_may_hold_anything(tmp_path, frozen_mlp, meta_mlp):
    """Only scales are refused: the LayerNorm's float weight is the model's own business."""
    save(frozen_mlp("int4"), tmp_path)
    _poison(tmp_path / FILE, "norm.weight", float("nan"))
    assert torch.isnan(load(tmp_path, meta_mlp(), progress=False).norm.weight).all()


@pytest.mark.parametrize(
    ("attribute", "part"), [("fc1", "scale"), ("fc2", "output_scale"), ("norm", "output_scale")]
)
def test_a_nan_or_inf_scale_is_refused_by_save_before_writing(
    tmp_path, frozen_mlp, attribute, part
):
    model = frozen_mlp("int4", "int8")
    module = getattr(model, attribute)
    scale = module.weight.scale if part == "scale" else getattr(module, part)
    scale.view(-1)[0] = float("nan") if part == "scale" else float("inf")
    key = f"{attribute}.weight.scale" if part == "scale" else f"{attribute}.{part}"
    with pytest.raises(ValueError, match=rf"module '{attribute}': its scale '{key}' holds NaN"):
        save(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
