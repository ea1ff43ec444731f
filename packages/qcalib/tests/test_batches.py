"""run_batches: every kind of batch reaches the model, with or without a progress bar."""

import pytest
import torch
from torch import nn

from quanta.qcalib.batches import run_batches


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple, dict]] = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))


@pytest.mark.parametrize("progress", [False, True])
def test_tensors_tuples_lists_and_dicts_are_unpacked_and_counted(progress):
    x, y = torch.ones(2), torch.zeros(2)
    model = Recorder()
    batches = iter([x, (x, y), [y], {"input": x}])  # no len(): the bar has no total
    assert run_batches(model, batches, progress) == 4
    assert [(len(args), sorted(kwargs)) for args, kwargs in model.calls] == [
        (1, []), (2, []), (1, []), (0, ["input"]),
    ]  # fmt: skip
    assert model.calls[1][0][1] is y and model.calls[3][1]["input"] is x


def test_no_batches_run_nothing():
    assert run_batches(Recorder(), []) == 0
