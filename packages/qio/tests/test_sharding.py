"""Sharded files with an index, tied weights stored once, re-saving into the same folder."""

import json

import pytest
import torch
from torch import nn

from quanta.qio import CorruptCheckpointError, load, save
from quanta.qio.safetensors_format import read_header
from quanta.qmodules import freeze, quantize

INDEX = "model.safetensors.index.json"


def test_shards_respect_the_size_and_the_index_maps_every_key(
    tmp_path, frozen_mlp, meta_mlp, inputs, as_plain
):
    model = frozen_mlp("int8", "int8")
    save(model, tmp_path, max_shard_size="10KB")
    shards = sorted(p for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / INDEX).read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    largest = max(t.numel() * t.element_size() for t in model.state_dict().values())
    for shard in shards:  # a shard is over the limit only when one tensor is
        assert shard.stat().st_size <= max(10_000, largest) + 4096
    loaded = load(tmp_path, meta_mlp(), progress=False)
    x = inputs(4, 256)
    assert torch.equal(as_plain(loaded(x)), as_plain(model(x)))


def test_resaving_removes_the_files_it_replaces(tmp_path, frozen_mlp, meta_mlp):
    (tmp_path / "notes.txt").write_text("kept")
    save(frozen_mlp("int8"), tmp_path, max_shard_size="10KB")
    save(frozen_mlp("int8"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "notes.txt"]
    save(frozen_mlp("int8"), tmp_path, max_shard_size="10KB")
    assert not (tmp_path / "model.safetensors").exists()
    load(tmp_path, meta_mlp(), progress=False)


def test_an_index_that_disagrees_with_the_shards_is_refused(tmp_path, frozen_mlp, meta_mlp):
    save(frozen_mlp("int8"), tmp_path, max_shard_size="10KB")
    index = json.loads((tmp_path / INDEX).read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../elsewhere.safetensors"
    (tmp_path / INDEX).write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="not a file name"):
        load(tmp_path, meta_mlp(), progress=False)


class TiedLM(nn.Module):
    """An embedding and an output layer sharing one weight, like SmolLM2's."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.body = nn.Linear(32, 32)
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.body(self.embed(ids))))


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = freeze(quantize(TiedLM(), weights="int4", exclude="head"))
    save(model, tmp_path)
    metadata = read_header(tmp_path / "model.safetensors").metadata
    config = json.loads(metadata["quanta.config"])
    assert config["aliases"] == {"head.weight": "embed.weight"}
    with torch.device("meta"):
        skeleton = TiedLM()
    loaded = load(tmp_path, skeleton, progress=False)
    assert loaded.head.weight is loaded.embed.weight
    ids = torch.arange(10)
    assert torch.equal(loaded(ids), model(ids))
