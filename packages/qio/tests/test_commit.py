"""A save replaces the checkpoint in its folder as a whole or not at all (issue #16, item 1).

A forked process saves a model over another of the same shape and is SIGKILLed: at every step
of the commit (each file written, renamed or removed) and at fixed times during the write.
After each kill the folder must load exactly the old model or exactly the new one, never a mix,
and the next save removes what the killed one left.
"""

import json
import os
import shutil
import signal
import time

import pytest
import torch
from torch import nn

from quanta.qio import CorruptCheckpointError, load, save
from quanta.qio import safetensors_format as format_module
from quanta.qmodules import freeze, quantize

INDEX = "model.safetensors.index.json"
LAYERS = 6


def _model(seed: int, features: int = 64, layers: int = LAYERS) -> nn.Module:
    """int8 Linear layers: one shard each at a shard size of one layer."""
    torch.manual_seed(seed)
    linears = [nn.Linear(features, features) for _ in range(layers)]
    return freeze(quantize(nn.Sequential(*linears), weights="int8"))


def _skeleton(like: nn.Module) -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(*[nn.Linear(m.in_features, m.out_features) for m in like])


def _shard_size(features: int) -> int:
    return features * features + 8 * features  # int8 codes, fp32 scales and bias: one layer


def _loads_as(folder, old: nn.Module, new: nn.Module) -> str:
    """'old' or 'new': which model the folder loads as, tensor for tensor."""
    state = load(folder, _skeleton(old), progress=False).state_dict()
    for name, model in (("old", old), ("new", new)):
        expected = model.state_dict()
        if state.keys() == expected.keys() and all(
            torch.equal(state[key], expected[key]) for key in state
        ):
            return name
    raise AssertionError(f"{folder} loads a mix of the old and the new model")


def _forked_save(model, folder, *, die_at_step=None, kill_after=None, **options) -> bool:
    """Save in a forked process, killed before its `die_at_step`-th file operation (a write,
    rename or removal) or `kill_after` seconds in; whether it was killed before finishing."""
    pid = os.fork()
    if pid == 0:  # the child: exits without returning into pytest
        code = 1
        try:
            torch.set_num_threads(1)  # the parent's OpenMP pool does not survive a fork
            if die_at_step is not None:
                _die_at_step(die_at_step)
            save(model, folder, **options)
            code = 0
        finally:
            os._exit(code)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)  # harmless once it has finished (a zombie until reaped)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, "the save failed"
    return os.WIFSIGNALED(status)


def _die_at_step(step: int) -> None:
    """In the child: SIGKILL this process just before its `step`-th file operation."""
    count = iter(range(step + 1))

    def counted(function):
        def wrapper(*args, **kwargs):
            if next(count) == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return wrapper

    format_module.save_file = counted(format_module.save_file)
    os.replace, os.unlink = counted(os.replace), counted(os.unlink)


def _kill_at_every_step(folder, old, new, old_options, new_options) -> set[str]:
    """Kill a save of `new` over `old` at each of its steps in turn; the models seen."""
    seen = set()
    for step in range(100):
        save(old, folder, **old_options)
        killed = _forked_save(new, folder, die_at_step=step, **new_options)
        seen.add(_loads_as(folder, old, new))
        if not killed:  # the save ran to its end: every step was a kill point
            assert _loads_as(folder, old, new) == "new"
            return seen
    raise AssertionError("the save never finished")


SHARDED = {"max_shard_size": _shard_size(64)}
SINGLE = {"max_shard_size": None}


@pytest.mark.parametrize(
    ("old_options", "new_options"),
    [
        (SHARDED, SHARDED),
        (SINGLE, SHARDED),
        (SHARDED, SINGLE),
        pytest.param(SINGLE, SINGLE, marks=pytest.mark.slow),
    ],
    ids=["sharded-over-sharded", "sharded-over-single", "single-over-sharded", "single-single"],
)
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_model(
    tmp_path, old_options, new_options
):
    # 3 shards: every step of a 6-shard save, fewer times (the timed kills below use 6)
    old, new = _model(0, layers=3), _model(1, layers=3)
    assert _kill_at_every_step(tmp_path, old, new, old_options, new_options) == {"old", "new"}


def _timed_kills(tmp_path, delays):
    features = 512  # a few MB a save: long enough to be killed while writing
    old, new = _model(0, features), _model(1, features)
    options = {"max_shard_size": _shard_size(features)}
    start = time.perf_counter()
    save(new, tmp_path / "timing", **options)
    duration = time.perf_counter() - start
    seen = []
    for fraction in delays:
        save(old, tmp_path / "model", **options)
        _forked_save(new, tmp_path / "model", kill_after=fraction * duration, **options)
        seen.append(_loads_as(tmp_path / "model", old, new))
    return seen


# fractions of one save's duration, spread over the write and its commit, the same every run
SLOW_DELAYS = [0.085 * i for i in range(1, 25)]
FAST_DELAYS = [0.3, 0.8, 1.5]


def test_a_sharded_save_killed_at_fixed_times_leaves_the_old_or_the_new_model(tmp_path):
    _timed_kills(tmp_path, FAST_DELAYS)


@pytest.mark.slow
def test_a_sharded_save_killed_24_times_leaves_the_old_or_the_new_model(tmp_path):
    seen = _timed_kills(tmp_path, SLOW_DELAYS)
    assert {"old", "new"} <= set(seen)


def _leftovers(folder) -> list[str]:
    committed = {INDEX, *json.loads((folder / INDEX).read_text())["weight_map"].values()}
    return sorted(p.name for p in folder.iterdir() if p.name not in committed | {"notes.txt"})


def test_the_next_save_removes_what_a_killed_save_left(tmp_path):
    old, new = _model(0), _model(1)
    (tmp_path / "notes.txt").write_text("kept")
    save(old, tmp_path, **SHARDED)
    _forked_save(new, tmp_path, die_at_step=2 * LAYERS, **SHARDED)  # written, not committed
    (tmp_path / ".model.safetensors.k3x9q_1a.tmp").write_bytes(b"older quanta's temporary")
    assert len(_leftovers(tmp_path)) > LAYERS  # the staging folder, its shards, the temporary
    save(old, tmp_path, **SHARDED)
    assert _leftovers(tmp_path) == []
    assert (tmp_path / "notes.txt").read_text() == "kept"
    assert _loads_as(tmp_path, old, new) == "old"


def test_shard_names_are_unique_to_their_save(tmp_path):
    save(_model(0), tmp_path, **SHARDED)
    first = set(json.loads((tmp_path / INDEX).read_text())["weight_map"].values())
    save(_model(1), tmp_path, **SHARDED)
    second = set(json.loads((tmp_path / INDEX).read_text())["weight_map"].values())
    assert len(first) == len(second) == LAYERS and not first & second
    assert all(name.startswith(f"model-0000{name[10]}-of-00006-") for name in second)
    assert {p.name for p in tmp_path.iterdir()} == {INDEX, *second}


def _shard_of(folder, layer: int):
    return next(folder.glob(f"model-0000{layer}-of-00006-*.safetensors"))


def test_a_shard_of_another_save_is_refused_by_name(tmp_path):
    save(_model(0), tmp_path / "a", **SHARDED)
    save(_model(1), tmp_path / "b", **SHARDED)
    shard = _shard_of(tmp_path / "a", 3)
    shutil.copyfile(_shard_of(tmp_path / "b", 3), shard)
    with pytest.raises(CorruptCheckpointError, match=rf"{shard.name}: written by save"):
        load(tmp_path / "a", _skeleton(_model(0)), progress=False)


def test_a_shard_the_index_does_not_record_is_refused(tmp_path):
    save(_model(0), tmp_path, **SHARDED)
    index = json.loads((tmp_path / INDEX).read_text())
    digests = index["metadata"]["quanta.file_digests"]
    name = _shard_of(tmp_path, 2).name
    digests[name] = "0" * 64
    (tmp_path / INDEX).write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match=rf"{name}.*digest"):
        load(tmp_path, _skeleton(_model(0)), progress=False)


def test_shards_of_older_saves_without_a_save_id_still_load(tmp_path):
    """Indexes written before save ids (older quanta) carry neither id nor digests."""
    model = _model(0)
    save(model, tmp_path, **SHARDED)
    index = json.loads((tmp_path / INDEX).read_text())
    del index["metadata"]["quanta.save_id"], index["metadata"]["quanta.file_digests"]
    (tmp_path / INDEX).write_text(json.dumps(index))
    assert _loads_as(tmp_path, model, _model(1)) == "old"
