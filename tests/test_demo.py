"""The demo (demo/, `python -m demo`): its command line, its quantize-a-copy step, its table and
its MobileNetV2, on tiny synthetic models (no real-model package needed)."""

import pytest
import torch
from torch import nn

from demo import __main__ as cli
from demo import deps, run
from demo.mobilenet import MobileNetV2
from quanta.qio import meta_skeleton
from quanta.qmodules import weight_memory


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unknown_model_is_a_usage_error(capsys):
    err = _usage_error(capsys, ["--models", "minilm,gpt5"])
    assert "unknown model 'gpt5'" in err
    assert "smollm2, minilm, mobilenet" in err


def test_unknown_weight_type_is_a_usage_error(capsys):
    err = _usage_error(capsys, ["--weights", "int3"])
    assert "unknown weight type 'int3'" in err
    assert "int8, int4, int2, float8" in err


@pytest.mark.parametrize("option", ["--tokens", "--sentences", "--images", "--group-size"])
def test_sizes_must_be_positive(capsys, option):
    assert "positive integer" in _usage_error(capsys, [option, "0"])


def test_demo_options_are_parsed():
    args = cli.build_parser().parse_args(
        ["--models", "minilm,mobilenet", "--weights", "int4", "--tokens", "512"]
    )
    assert args.models == ["minilm", "mobilenet"]
    assert args.weights == ["int4"]
    assert args.tokens == 512


def test_demo_choices_match_the_demo():
    defaults = cli.build_parser().parse_args([])
    assert tuple(defaults.models) == tuple(run.MODELS_UNDER_TEST) == run.MODEL_NAMES
    assert tuple(defaults.weights) == run.WEIGHT_NAMES
    assert run.DemoSettings(**vars(defaults)) == run.DemoSettings(
        models=list(run.MODEL_NAMES), weights=list(run.WEIGHT_NAMES)
    )


def test_missing_package_names_it_and_the_nox_session():
    with pytest.raises(deps.MissingDemoDependency) as error:
        deps.require("quanta_no_such_package")
    assert "'quanta_no_such_package'" in str(error.value)
    assert "nox -s demo" in str(error.value)


def test_missing_package_makes_the_demo_exit_1_with_the_message(capsys, monkeypatch):
    def missing(settings):
        deps.require("quanta_no_such_package")

    monkeypatch.setattr(run, "main", missing)
    assert cli.main(["--models", "minilm"]) == 1
    err = capsys.readouterr().err
    assert "quanta demo: error:" in err
    assert "nox -s demo" in err


def test_mobilenet_v2_has_torchvision_layout():
    model = MobileNetV2().eval()
    # torchvision's mobilenet_v2 state_dict: 314 entries, 3,504,872 parameters.
    assert len(model.state_dict()) == 314
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


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
