"""Export to compressed-tensors (issue 19) without compressed-tensors installed: the files and
config follow the format, read back into quanta bit for bit, and what cannot map is refused
(or requantized when asked). test_interop_compressed_tensors.py loads them with the real loader."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

transformers = pytest.importorskip("transformers")

from quanta.qintegrations import cli  # noqa: E402
from quanta.qintegrations.export import (  # noqa: E402
    FORMATS,
    export,
    load_compressed_tensors,
)
from quanta.qintegrations.export.compressed_tensors import pack_int32, unpack_int32  # noqa: E402
from quanta.qmodules import freeze, quantize  # noqa: E402

Q_PROJ = "model.layers.0.self_attn.q_proj"
DOWN_PROJ = "model.layers.0.mlp.down_proj"


def _tensors(folder) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118


def _quantization_config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())["quantization_config"]


def test_pack_int32_is_the_documented_layout():
    # int4: code q + 8 of element k at bits 4*(k % 8) of word k // 8
    signed = torch.tensor([[-8, -7, 0, 1, 2, 3, 4, 7, 5]], dtype=torch.int8)
    words = pack_int32(signed, 4)
    expected_first = sum((int(code) + 8) << (4 * k) for k, code in enumerate(signed[0, :8]))
    assert words.dtype == torch.int32 and words.shape == (1, 2)
    assert int(words[0, 0]) & 0xFFFFFFFF == expected_first
    assert int(words[0, 1]) == 5 + 8  # the padding codes are 0 - 8 + 8 = 0
    for bits in (2, 4, 8):
        codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (5, 37), dtype=torch.int8)
        assert torch.equal(unpack_int32(pack_int32(codes, bits), bits, 37), codes)


def test_every_scheme_round_trips_bit_for_bit(
    quantized_tiny_llama, export_scheme, token_ids, tmp_path
):
    model = quantized_tiny_llama(**export_scheme)
    folder = export(model, tmp_path / "ct", "compressed-tensors")
    config = _quantization_config(folder)
    assert config["quant_method"] == "compressed-tensors"
    assert config["ignore"] == ["lm_head"]
    back = load_compressed_tensors(folder)
    for name in (Q_PROJ, DOWN_PROJ):
        ours, theirs = model.get_submodule(name), back.get_submodule(name)
        assert theirs.qconfig.settings() == ours.qconfig.settings()
        for part, tensor in ours.stored_weight.inner_tensors().items():
            assert torch.equal(theirs.stored_weight.inner_tensors()[part], tensor), part
        assert {
            k: torch.equal(v, ours.activation_scales()[k])
            for k, v in theirs.activation_scales().items()
        } == dict.fromkeys(ours.activation_scales(), True)
    with torch.no_grad():
        assert torch.equal(back(token_ids).logits, model(token_ids).logits)


def test_int4_files_follow_the_format(quantized_tiny_llama, tmp_path):
    model = quantized_tiny_llama(weights="int4", group_size=64)
    folder = export(model, tmp_path / "ct", "compressed-tensors")
    config = _quantization_config(folder)
    assert config["format"] == "pack-quantized"
    groups = list(config["config_groups"].values())
    strategies = {group["weights"]["strategy"]: group for group in groups}
    assert set(strategies) == {"channel", "group"}  # K=64: one group per row; K=128: groups
    assert strategies["group"]["weights"]["group_size"] == 64
    assert (
        DOWN_PROJ in strategies["group"]["targets"] and Q_PROJ in strategies["channel"]["targets"]
    )
    assert all(not group["weights"]["symmetric"] for group in groups)
    tensors = _tensors(folder)
    assert tensors[f"{DOWN_PROJ}.weight_packed"].shape == (64, 128 // 8)
    assert tensors[f"{DOWN_PROJ}.weight_packed"].dtype == torch.int32
    assert tensors[f"{DOWN_PROJ}.weight_scale"].shape == (64, 2)
    assert tensors[f"{DOWN_PROJ}.weight_zero_point"].shape == (64 // 8, 2)
    assert tensors[f"{DOWN_PROJ}.weight_shape"].tolist() == [64, 128]
    # the stored codes are quanta's minus 8, and (q - zp) * scale is quanta's weight
    weight = model.get_submodule(DOWN_PROJ).stored_weight
    parts = weight.weight_parts()
    codes = unpack_int32(tensors[f"{DOWN_PROJ}.weight_packed"], 4, 128)
    zero_point = unpack_int32(tensors[f"{DOWN_PROJ}.weight_zero_point"].t(), 4, 64).t()
    assert torch.equal(codes.to(torch.int16) + 8, parts.codes.to(torch.int16))
    assert torch.equal(zero_point.to(torch.int16) + 8, parts.zero_point.to(torch.int16))
    scale = tensors[f"{DOWN_PROJ}.weight_scale"].repeat_interleave(64, dim=1)
    dequantized = (codes.float() - zero_point.float().repeat_interleave(64, dim=1)) * scale
    assert torch.equal(dequantized, weight.dequantize())


@pytest.mark.parametrize(
    ("settings", "format", "weight_dtype"),
    [
        (dict(weights="int8"), "pack-quantized", torch.int32),
        (dict(weights="fp8"), "naive-quantized", torch.float8_e4m3fn),
        (dict(weights="int8", activations="int8"), "int-quantized", torch.int8),
        (dict(weights="fp8", activations="fp8"), "float-quantized", torch.float8_e4m3fn),
    ],
)
def test_8bit_files_follow_the_format(
    quantized_tiny_llama, settings, format, weight_dtype, tmp_path
):
    folder = export(quantized_tiny_llama(**settings), tmp_path / "ct", "compressed-tensors")
    config = _quantization_config(folder)
    (group,) = config["config_groups"].values()
    assert config["format"] == group["format"] == format
    assert group["targets"] == ["Linear"]
    assert group["weights"]["strategy"] == "channel" and group["weights"]["symmetric"]
    tensors = _tensors(folder)
    weight = tensors.get(f"{Q_PROJ}.weight", tensors.get(f"{Q_PROJ}.weight_packed"))
    assert weight.dtype == weight_dtype
    assert tensors[f"{Q_PROJ}.weight_scale"].shape == (64, 1)
    if "activations" in settings:  # static: a per-tensor input scale (and output scale, where
        # calibration kept the output quantized)
        assert group["input_activations"]["strategy"] == "tensor"
        assert tensors[f"{Q_PROJ}.input_scale"].shape == (1,)
        output_quantized = f"{Q_PROJ}.output_scale" in tensors
        assert (group["output_activations"] is not None) == output_quantized


def test_dynamic_activations_are_per_token(quantized_tiny_llama, tmp_path):
    model = quantized_tiny_llama(weights="int8", activations="int8", activations_mode="dynamic")
    folder = export(model, tmp_path / "ct", "compressed-tensors")
    (group,) = _quantization_config(folder)["config_groups"].values()
    assert group["input_activations"] == {
        "num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
        "group_size": None, "dynamic": True,
    }  # fmt: skip
    assert group["output_activations"] is None
    assert f"{Q_PROJ}.input_scale" not in _tensors(folder)


def test_tied_embeddings_stay_tied(tmp_path, token_ids):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    freeze(quantize(model, weights="int8", include="*proj"), progress=False)
    folder = export(model, tmp_path / "ct", "compressed-tensors")
    assert "lm_head.weight" not in _tensors(folder)
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True
    with torch.no_grad():
        assert torch.equal(
            load_compressed_tensors(folder)(token_ids).logits, model(token_ids).logits
        )


@pytest.mark.parametrize(
    ("settings", "nearest"),
    [
        (dict(weights="nf4"), "qint4 weights with group_size 64"),
        (dict(weights="int4", group_size=32, optimizer="hqq"), "qint4 weights with group_size 32"),
        (dict(weights="fp8_e5m2"), "qfloat8_e4m3fn weights"),
    ],
)
def test_what_cannot_map_is_refused_or_requantized(
    quantized_tiny_llama, settings, nearest, tmp_path, token_ids
):
    model = quantized_tiny_llama(**settings)
    with pytest.raises(ValueError, match=f"module '{Q_PROJ}'.*nearest exact option: {nearest}"):
        export(model, tmp_path / "refused", "compressed-tensors")
    assert not (tmp_path / "refused").exists()
    with pytest.warns(UserWarning, match=r"requantized 14 module\(s\).*largest \d+\.\d+%"):
        folder = export(model, tmp_path / "ct", "compressed-tensors", requantize=True)
    back = load_compressed_tensors(folder)
    original = model.get_submodule(Q_PROJ).weight.dequantize()
    requantized = back.get_submodule(Q_PROJ).weight.dequantize()
    error = float((requantized - original).norm() / original.norm())
    assert 0 < error < 0.15  # 4-bit grids: about 10% of the weight's norm, fp8's 1%


def test_activations_without_a_type_are_refused(quantized_tiny_llama, tmp_path):
    model = quantized_tiny_llama(weights="int8", activations="fp8_e5m2", activations_mode="dynamic")
    for requantize in (False, True):
        with pytest.raises(
            ValueError, match=r"float8_e5m2 activations.*qfloat8_e4m3fn activations"
        ):
            export(model, tmp_path / "ct", "compressed-tensors", requantize=requantize)


def test_a_quantized_embedding_is_written_dequantized(tiny_llama_dir, tmp_path, token_ids):
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    freeze(quantize(model, weights="int8", exclude="lm_head"), progress=False)
    with pytest.warns(UserWarning, match="wrote model.embed_tokens dequantized"):
        folder = export(model, tmp_path / "ct", "compressed-tensors")
    assert _tensors(folder)["model.embed_tokens.weight"].dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(
            load_compressed_tensors(folder)(token_ids).logits, model(token_ids).logits
        )


def test_bad_input_is_refused_early(tiny_llama_dir, quantized_tiny_llama, tmp_path):
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(ValueError, match="no quantized Linear module"):
        export(model, tmp_path / "float", "compressed-tensors")
    quantize(model, weights="int8", include="*proj")
    with pytest.raises(ValueError, match=r"not frozen.*quanta\.freeze"):
        export(model, tmp_path / "unfrozen", "compressed-tensors")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        export(quantized_tiny_llama(weights="int8"), tmp_path / "taken", "compressed-tensors")
    with pytest.raises(ValueError, match=r"format must be one of \['compressed-tensors', 'gguf'\]"):
        export(model, tmp_path / "x", "onnx")
    with pytest.raises(TypeError, match="Transformers model"):
        export(torch.nn.Linear(2, 2), tmp_path / "x", "compressed-tensors")


def test_import_refuses_what_quanta_has_no_layout_for(quantized_tiny_llama, tmp_path):
    folder = export(quantized_tiny_llama(weights="int8"), tmp_path / "ct", "compressed-tensors")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 3
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"module '{Q_PROJ}': 3-bit int weights"):
        load_compressed_tensors(folder)
    config["quantization_config"]["quant_method"] = "awq"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="is not 'compressed-tensors'"):
        load_compressed_tensors(folder)


def test_the_cli_lists_the_export_formats():
    assert cli.EXPORT_FORMATS == FORMATS


def test_cli_export(tiny_llama_dir, tmp_path, capsys, token_ids):
    quantized = tmp_path / "int4"
    argv = ["quantize", str(tiny_llama_dir), "-o", str(quantized), "--weights", "int4"]
    assert cli.main([*argv, "--group-size", "32"]) == 0
    output = tmp_path / "ct"
    argv = ["export", str(quantized), "--format", "compressed-tensors", "-o", str(output)]
    with pytest.warns(UserWarning, match="wrote model.embed_tokens dequantized"):
        assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"exported to {output} (compressed-tensors)" in printed
    assert "model.safetensors" in printed and "config.json" in printed
    model = transformers.AutoModelForCausalLM.from_pretrained(quantized).eval()
    with torch.no_grad():
        expected = model(token_ids).logits
        assert torch.equal(load_compressed_tensors(output)(token_ids).logits, expected)


def test_cli_export_errors_exit_2(tiny_llama_dir, tmp_path, capsys):
    argv = ["export", str(tiny_llama_dir), "--format", "compressed-tensors", "-o", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "not quantized with quanta" in capsys.readouterr().err
    quantized = tmp_path / "nf4"
    assert (
        cli.main(["quantize", str(tiny_llama_dir), "-o", str(quantized), "--weights", "nf4"]) == 0
    )
    argv = ["export", str(quantized), "--format", "compressed-tensors", "-o", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after the progress bars of quantize
    assert error.startswith(f"quanta export: error: module '{Q_PROJ}': quanta.qnf4 weights")
    embedding = pytest.warns(UserWarning, match="wrote model.embed_tokens dequantized")
    with embedding, pytest.warns(UserWarning, match="requantized 14 module"):
        assert cli.main([*argv, "--requantize"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(quantized), "--format", "onnx", "-o", str(tmp_path / "x")])
    assert exit_info.value.code == 2
