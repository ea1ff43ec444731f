"""The demo's quantize-a-copy step and its table, on tiny synthetic models."""

import pytest
import torch
from torch import nn

from quanta.qintegrations.demo import run
from quanta.qio import meta_skeleton
from quanta.qmodules import weight_memory


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 128), nn.Linear(128, 4)
    )


def test_quantized_copy_leaves_the_fp32_model_untouched():
    model = _model()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    qmodel = run.quantized_copy(model, "int4", exclude="3", progress=False)
    assert qmodel is not model
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert type(model[2]) is nn.Linear
    assert type(qmodel[3]) is nn.Linear  # excluded
    quantized_bytes, float_bytes = weight_memory(qmodel)
    assert float_bytes == 4 * (8 * 3 * 3 * 3 + 8 * 6 * 6 * 128)
    assert quantized_bytes < float_bytes / 4


def test_table_has_one_line_per_row_and_relative_columns():
    rows = [
        run.DemoRow("LM", "fp32", 100, 100, 100, "perplexity", 20.0, 20.0, "token", 0.002, 0.002),
        run.DemoRow("LM", "int8", 100, 26, 26.5, "perplexity", 20.1, 20.0, "token", 0.003, 0.002),
        run.DemoRow("CNN", "int4", 10, 1.5, 1.6, "top-1 agree", 0.75, 1.0, "batch", 0.5, 0.25),
    ]
    lines = run.format_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0].split()[:2] == ["model", "weights"]
    assert "+0.50%" in lines[3] and "0.260x" in lines[3] and "1.50x" in lines[3]
    assert "26.5" in lines[3]
    assert "-0.2500" in lines[4] and "2.00x" in lines[4]


def test_reload_from_a_meta_skeleton_gives_the_saved_outputs(tmp_path):
    model = _model()
    qmodel = run.quantized_copy(model, "int4", progress=False)
    skeleton = meta_skeleton(model)
    assert all(p.is_meta for p in skeleton.parameters())
    assert not any(p.is_meta for p in model.parameters())
    images = torch.randn(2, 3, 8, 8)
    reloaded, size = run.saved_and_reloaded(qmodel, model, tmp_path / "ckpt", lambda m: m(images))
    assert torch.equal(reloaded(images), qmodel(images))
    assert 0 < size < run.model_bytes(model) / 4
    with pytest.raises(TypeError, match="model must be a torch"):
        meta_skeleton(model.state_dict())
