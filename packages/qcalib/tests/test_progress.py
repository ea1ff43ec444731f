"""Progress bars of the passes qcalib runs: one per phase over a second, none when asked."""

import pytest
import torch
from torch import nn

from quanta.qcalib import GPTQ, optimize_weights, rotate, smooth
from quanta.qmodules import quantize


@pytest.fixture
def bars_at_once(monkeypatch):
    """Bars shown from the first step: stands for a phase that runs over a second."""
    monkeypatch.setattr("quanta.qmodules.progress.DELAY_S", 0.0)


def mlp(**options) -> nn.Module:
    torch.manual_seed(0)
    return quantize(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)), **options)


def batches() -> list[torch.Tensor]:
    return list(torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("progress", [True, False])
def test_smooth_and_rotate_show_a_bar_unless_asked_not_to(bars_at_once, capsys, progress):
    model = mlp(weights="int8", activations="int8")
    capsys.readouterr()
    smooth(model, batches(), progress=progress)
    rotate(model, progress=progress)
    shown = capsys.readouterr().err
    assert ("calibration batches:" in shown and "rotate:" in shown) is progress
    assert progress or shown == ""


@pytest.mark.parametrize("progress", [True, False])
def test_optimize_weights_shows_its_two_phases_not_a_bar_per_module(bars_at_once, capsys, progress):
    model = mlp(weights="int4", group_size=32, optimizer=GPTQ())
    capsys.readouterr()
    optimize_weights(model, batches(), progress=progress)
    shown = capsys.readouterr().err
    assert model[0].is_frozen and model[2].is_frozen
    assert ("calibration batches:" in shown and "optimizing weights:" in shown) is progress
    assert "freeze" not in shown  # the modules are counted by "optimizing weights"
    assert progress or shown == ""
