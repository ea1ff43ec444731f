"""`quanta quantize` and `quanta info` on a tiny LLaMA folder, and their errors."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

safetensors_torch = pytest.importorskip("safetensors.torch")

from quanta.qintegrations import cli  # noqa: E402
from quanta.qio import save  # noqa: E402
from quanta.qmodules import QModuleMixin, freeze, quantize  # noqa: E402


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
    assert "quantized modules: 15" in report  # 2 layers x 7 projections, and the embedding
    assert "15  weights qint4 group 32" in report
    assert "quantized weights:" in report and "fp32:" in report

    again = ["quantize", str(output), "-o", str(tmp_path / "int8"), "--weights", "int8"]
    assert cli.main(again) == 2
    err = capsys.readouterr().err
    assert "already quantized by quanta" in err and "'int4' saved, 'int8' requested" in err
    assert not (tmp_path / "int8").exists()


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
    err = _usage_error(capsys, argv)
    assert "argument --weights: invalid choice: 'int3' (choose from" in err and "int4" in err
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


def _one_line_usage_error(capsys, argv: list[str]) -> str:
    """Exit status 2 and one line on stderr, no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_eval_of_a_folder_without_a_tokenizer_is_a_usage_error(capsys, tiny_llama_dir):
    err = _one_line_usage_error(capsys, ["eval", str(tiny_llama_dir), "--perplexity", __file__])
    assert err.startswith(f"quanta eval: error: {tiny_llama_dir} has no tokenizer")


def test_calibration_without_a_tokenizer_is_refused_before_loading(
    capsys, tiny_llama_dir, tmp_path
):
    argv = ["quantize", str(tiny_llama_dir), "-o", str(tmp_path / "out"), "--activations", "int8"]
    err = _one_line_usage_error(capsys, [*argv, "--calibration-text", __file__])
    assert f"{tiny_llama_dir} has no tokenizer" in err and "--calibration-text needs one" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["quantize", "-o", "out"], ["eval", "--perplexity", __file__]])
def test_a_config_without_weights_is_a_usage_error(capsys, tmp_path, command):
    (tmp_path / "config.json").write_text("{}")
    err = _usage_error(capsys, [command[0], str(tmp_path), *command[1:]])
    assert f"{tmp_path} has a config.json but no weights (none of model.safetensors" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    try:
        expected = importlib.metadata.version("quanta")
    except importlib.metadata.PackageNotFoundError:  # quanta-qintegrations installed alone
        expected = f"(quanta-qintegrations {importlib.metadata.version('quanta-qintegrations')})"
    assert capsys.readouterr().out.strip() == f"quanta {expected}"


def test_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["quantize", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--weights QTYPE weight qtype, one of: e4m3, e5m2, " in help_text
    assert "int2, int4, int8, " in help_text and "--activations QTYPE" in help_text
    assert "--activations-mode {static,dynamic}" in help_text


@pytest.mark.parametrize("max_shard_size", [None, "40KB"])
def test_info_of_a_quanta_save_folder(capsys, tiny_llama_dir, tmp_path, max_shard_size):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    freeze(quantize(model, weights="int4", exclude="lm_head"))
    save(model, tmp_path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    assert (tmp_path / "model.safetensors.index.json").is_file() == bool(max_shard_size)

    assert cli.main(["info", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    assert "metadata (quanta.save)" in report
    assert "quantized modules: 15" in report
    # 2 layers x (q, o 64x64; k, v 32x64; gate, up, down 64x128) and the embedding (256 x 64,
    # untied) int4 weights: 0.36 MB in fp32
    assert "(fp32: 0.4 MB, " in report


def test_info_of_quanta_save_beside_a_float_config(capsys, tiny_llama_dir, tmp_path):
    """quanta.save into a Transformers folder keeps its float config.json."""
    shutil.copy(tiny_llama_dir / "config.json", tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    save(freeze(quantize(model, weights="int8", exclude="lm_head")), tmp_path)
    assert cli.main(["info", str(tmp_path)]) == 0
    assert "15  weights qint8" in capsys.readouterr().out


def test_info_of_a_folder_without_a_checkpoint_is_a_usage_error(capsys, tmp_path):
    err = _usage_error(capsys, ["info", str(tmp_path)])
    assert "no config.json (save_pretrained writes one) and no model.safetensors" in err


def test_info_of_a_damaged_quanta_config_is_a_usage_error(capsys, tmp_path):
    safetensors_torch.save_file(
        {"x": torch.zeros(1)}, tmp_path / "model.safetensors", metadata={"quanta.config": "{"}
    )
    err = _one_line_usage_error(capsys, ["info", str(tmp_path)])
    assert "the config is not valid JSON" in err


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A Qwen2 model with its tokenizer, which has no BOS token (as every Qwen2 tokenizer)."""
    vocab = {chr(code): code - 33 for code in range(33, 127)} | {"\u0120": 94}  # \u0120: space
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=[])
    assert tokenizer.bos_token_id is None and tokenizer.eos_token_id is not None
    config = transformers.Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-qwen2")
    transformers.Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_eval_of_a_tokenizer_without_bos(capsys, tiny_qwen2_dir, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text("the quick brown fox jumps over the lazy dog " * 4)
    argv = ["eval", str(tiny_qwen2_dir), "--perplexity", str(text_file), "--window", "32"]
    assert cli.main(argv) == 0
    printed = float(capsys.readouterr().out.split("perplexity:")[1])
    assert 1 < printed < 2 * 128  # a random model: about the vocab size
