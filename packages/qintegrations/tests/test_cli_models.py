"""`quanta quantize` and `quanta info` on a tiny LLaMA folder, and their errors."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from quanta.qintegrations import cli  # noqa: E402
from quanta.qmodules import QModuleMixin  # noqa: E402


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_quantize_then_info(tiny_llama_dir, token_ids, tmp_path, capsys):
    output = tmp_path / "int4"
    argv = ["quantize", str(tiny_llama_dir), "-o", str(output), "--weights", "int4"]
    assert cli.main([*argv, "--group-size", "32", "--exclude", "lm_head"]) == 0
    assert f"saved to {output}" in capsys.readouterr().out

    model = transformers.AutoModelForCausalLM.from_pretrained(output).eval()
    assert model.model.layers[0].self_attn.q_proj.qconfig.group_size == 32
    assert not isinstance(model.lm_head, QModuleMixin)
    with torch.inference_mode():
        assert torch.isfinite(model(token_ids).logits).all()

    assert cli.main(["info", str(output)]) == 0
    report = capsys.readouterr().out
    assert "quantized modules: 14" in report  # 2 layers x 7 projections
    assert "14  weights qint4 group 32" in report
    assert "quantized weights:" in report and "fp32:" in report


def test_info_of_a_float_folder(tiny_llama_dir, capsys):
    assert cli.main(["info", str(tiny_llama_dir)]) == 0
    assert "not quantized with quanta" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["info"], ["eval", "--perplexity", __file__]])
def test_a_missing_folder_is_a_usage_error(capsys, tmp_path, command):
    err = _usage_error(capsys, [command[0], str(tmp_path / "nope"), *command[1:]])
    assert "no such folder" in err


def test_a_folder_that_is_not_a_model_is_a_usage_error(capsys, tmp_path):
    err = _usage_error(capsys, ["quantize", str(tmp_path), "-o", str(tmp_path / "out")])
    assert "is not a model folder: it has no config.json" in err


def test_an_unknown_qtype_is_a_usage_error(capsys, tiny_llama_dir, tmp_path):
    argv = ["quantize", str(tiny_llama_dir), "-o", str(tmp_path), "--weights", "int3"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "weights='int3' is not a known qtype" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_static_activations_need_calibration_text(capsys, tiny_llama_dir, tmp_path):
    argv = ["quantize", str(tiny_llama_dir), "-o", str(tmp_path), "--activations", "int8"]
    assert cli.main(argv) == 2
    assert "--calibration-text" in capsys.readouterr().err


def test_a_missing_calibration_file_is_a_usage_error(capsys, tiny_llama_dir, tmp_path):
    argv = ["quantize", str(tiny_llama_dir), "-o", str(tmp_path), "--calibration-text", "x.txt"]
    assert "no such file: x.txt" in _usage_error(capsys, argv)


def test_calibration_text_without_static_activations_is_refused(capsys, tiny_llama_dir, tmp_path):
    argv = ["quantize", str(tiny_llama_dir), "-o", str(tmp_path), "--calibration-text", __file__]
    assert cli.main(argv) == 2
    assert "add --activations" in capsys.readouterr().err
