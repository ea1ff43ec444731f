"""`quanta quantize`, `info` and `eval` on SmolLM2-135M: the command line's perplexity is the
Python API's (issue #7 acceptance)."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

from demo import data  # noqa: E402
from quanta.qintegrations import cli, metrics  # noqa: E402

EVAL_TOKENS = 1024  # two 512-token windows: enough to compare, quick on CPU
# int4 (default groups, lm_head float) over fp32 on these tokens: measured 41.72 / 31.57 = 1.32
MAX_INT4_RATIO = 1.5


@pytest.fixture(scope="module")
def smollm2_dir(smollm2):
    """The demo's fp32 cache of SmolLM2: a plain safetensors folder (config.json, tokenizer)."""
    from demo import models

    return models.cache_dir() / models.SMOLLM2_CACHE_NAME


def test_quantize_info_eval_round_trip(smollm2, smollm2_dir, tmp_path, capsys):
    text_file = tmp_path / "lee.txt"
    text_file.write_text(data.lee_text(), encoding="utf8")
    output = tmp_path / "smollm2-int4"
    argv = ["quantize", str(smollm2_dir), "-o", str(output), "--weights", "int4"]
    assert cli.main([*argv, "--exclude", "lm_head"]) == 0
    assert (output / "tokenizer.json").is_file()

    assert cli.main(["info", str(output)]) == 0
    report = capsys.readouterr().out
    assert "quantized modules: 210" in report  # 30 layers x 7 projections

    argv = ["eval", str(output), "--perplexity", str(text_file), "--tokens", str(EVAL_TOKENS)]
    assert cli.main(argv) == 0
    printed = float(capsys.readouterr().out.split("perplexity:")[1])

    float_model, tokenizer = smollm2
    model = transformers.AutoModelForCausalLM.from_pretrained(output).eval()
    token_ids = metrics.lm_token_ids(tokenizer, data.lee_text(), EVAL_TOKENS)
    expected = metrics.perplexity(model, token_ids, tokenizer.bos_token_id)
    assert printed == pytest.approx(expected, abs=5e-5)  # printed with 4 decimals
    float_perplexity = metrics.perplexity(float_model, token_ids, tokenizer.bos_token_id)
    assert float_perplexity < expected < MAX_INT4_RATIO * float_perplexity


@pytest.mark.slow
def test_quantize_with_calibrated_activations(smollm2_dir, tmp_path, capsys):
    text_file = tmp_path / "lee.txt"
    text_file.write_text(data.lee_text(), encoding="utf8")
    output = tmp_path / "smollm2-w8a8"
    argv = ["quantize", str(smollm2_dir), "-o", str(output), "--weights", "int8"]
    argv += ["--activations", "int8", "--calibration-text", str(text_file)]
    assert cli.main([*argv, "--calibration-tokens", "1024"]) == 0
    assert "activations qint8 (static)" in capsys.readouterr().out
    model = transformers.AutoModelForCausalLM.from_pretrained(output)
    assert model.model.layers[0].mlp.down_proj.input_scale.item() != 1.0
