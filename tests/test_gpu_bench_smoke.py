"""The GPU check (bench/gpu.sh and its bench/gpu_*.py scripts) runs only on a lent GPU, rarely:
its scripts' CPU --smoke mode runs here, so that they keep working between those runs."""

from __future__ import annotations

import importlib
import itertools
import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    """Import a script of bench/, which is no installed package: the repository root goes first
    on sys.path."""
    monkeypatch.syspath_prepend(str(ROOT))
    return lambda name: importlib.import_module(f"bench.{name}")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gpu_linear_smoke_fills_the_table(bench, tmp_path):
    gpu_linear = bench("gpu_linear")
    gpu_linear.main(
        ["--smoke", "--out", str(tmp_path / "linear"), "--libraries", "torch", "quanta"]
    )
    rows = read_rows(tmp_path / "linear.jsonl")
    for case in gpu_linear.CASES:
        columns = {r["column"]: r for r in rows if r["case"] == case.format}
        expected = {"bf16", "quanta", "quanta_native"}
        if gpu_linear.FORMATS[case.format].torch_native:  # torch's kernels: their CPU twins here
            expected.add("torch")
        for column in expected:
            row = columns[column]
            assert "error" not in row, (case, row)
            assert row["us"] > 0 and row["relative_error"] < gpu_linear.SUSPECT_ERROR, (case, row)
        assert columns["quanto"]["skipped"] == "not in --libraries"
    lines = (tmp_path / "linear.md").read_text().splitlines()
    first = lines.index(next(line for line in lines if line.startswith("|---"))) + 1
    table_rows = itertools.takewhile(lambda line: line.startswith("| "), lines[first:])
    assert len(list(table_rows)) == len(gpu_linear.CASES)


def test_gpu_generate_smoke_times_every_model(bench, tmp_path):
    gpu_generate = bench("gpu_generate")
    out = tmp_path / "generate"
    gpu_generate.main(["--smoke", "--out", str(out), "--libraries", "torch", "quanta"])
    rows = read_rows(out.with_suffix(".jsonl"))
    assert len(rows) == sum(case.library != "quanto" for case in gpu_generate.CASES)
    assert all(row.get("ms_per_token", 0) > 0 for row in rows), rows
    assert "| int4 | quanta |" in out.with_suffix(".md").read_text()


def test_gpu_sanitize_smoke_builds_and_calls_every_format(bench, capsys):
    with pytest.raises(SystemExit) as exit_status:
        bench("gpu_sanitize").main(["--smoke"])
    assert exit_status.value.code == 0, capsys.readouterr().out


def test_quanto_baseline_quantizes_a_linear(bench):
    pytest.importorskip("optimum.quanto")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    x = torch.randn(3, 64)
    expected = model(x)
    bench("gpu_common").quantize_quanto(model, {"weights": "qint8"})
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=2e-2)


def test_gpu_sh_parses():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu.sh")], check=True)
