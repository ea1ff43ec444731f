"""bench/generate.py (issue 21) in its --smoke mode, on a tiny random Llama, so that the CPU
generation benchmark keeps working between the runs that fill docs/benchmarks.md."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def generate(monkeypatch):
    """bench.generate, imported from the repository root (bench/ is no installed package)."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.generate")


def written_rows(folder: Path) -> dict[str, dict]:
    (jsonl,) = folder.glob("generate-tiny-*.jsonl")
    assert jsonl.with_suffix(".md").is_file()
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return {r["row"]: r for r in records[1:]}


def assert_measured(row: dict) -> None:
    assert row["error"] is None, row["error"]
    assert row["prompt_tokens_per_s"] > 0 and row["generated_tokens_per_s"] > 0
    assert len(row["generated_ids"]) == 8  # --smoke generates 8 tokens
    assert math.isfinite(row["perplexity"])


def test_smoke_rows_report_speed_and_perplexity(generate, tmp_path):
    rows = ["llama.cpp", "fp32", "int4"]
    generate.main(["--smoke", "--in-process", "--results", str(tmp_path), "--rows", *rows])
    rows = written_rows(tmp_path)
    for name in ("fp32", "int4"):
        assert_measured(rows[name])
    # the tiny model has no tokenizer, so no GGUF: the row says why instead of failing the run
    assert rows["llama.cpp"]["error"].startswith("n/a")


@pytest.mark.slow
def test_smoke_runs_every_row_in_its_own_process(generate, tmp_path):
    generate.main(["--smoke", "--results", str(tmp_path)])
    rows = written_rows(tmp_path)
    for name in ("fp32", "int4", "int4-compiled", "int4-head"):
        assert_measured(rows[name])
        assert rows[name]["peak_rss_mb"] > 0
    # the static-cache compiled decode generates exactly what eager generate does
    assert rows["int4-compiled"]["generated_ids"] == rows["int4"]["generated_ids"]


def test_head8_rows_quantize_the_tied_head_to_int8_and_the_rest_as_asked(generate):
    from transformers import LlamaForCausalLM

    from bench.generate_models import tiny_llama_config
    from bench.generate_worker import parse_row, quantized

    row = parse_row("int4-head8-compiled")
    assert (row.weights, row.head, row.compiled) == ("int4", "head8", True)
    assert row.checkpoint == "int4-head8"
    model = quantized(LlamaForCausalLM(tiny_llama_config()), row.weights, row.head, 32)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied, one tensor
    assert model.lm_head.weight.qtype.name == "qint8"
    assert model.model.layers[0].mlp.up_proj.weight.qtype.name == "qint4"
