"""The `quanta` command line: argument errors are explained and exit with status 2."""

import pytest

from quanta.qintegrations import cli
from quanta.qintegrations.demo import deps


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unknown_model_is_a_usage_error(capsys):
    err = _usage_error(capsys, ["demo", "--models", "minilm,gpt5"])
    assert "unknown model 'gpt5'" in err
    assert "smollm2, minilm, mobilenet" in err


def test_unknown_weight_type_is_a_usage_error(capsys):
    err = _usage_error(capsys, ["demo", "--weights", "int3"])
    assert "unknown weight type 'int3'" in err
    assert "int8, int4, int2, float8" in err


@pytest.mark.parametrize("option", ["--tokens", "--sentences", "--images", "--group-size"])
def test_sizes_must_be_positive(capsys, option):
    assert "positive integer" in _usage_error(capsys, ["demo", option, "0"])


def test_a_subcommand_is_required(capsys):
    assert "required" in _usage_error(capsys, [])


def test_unknown_subcommand(capsys):
    assert "invalid choice" in _usage_error(capsys, ["bench"])


def test_demo_options_are_parsed():
    args = cli.build_parser().parse_args(
        ["demo", "--models", "minilm,mobilenet", "--weights", "int4", "--tokens", "512"]
    )
    assert args.models == ["minilm", "mobilenet"]
    assert args.weights == ["int4"]
    assert args.tokens == 512


def test_demo_choices_match_the_demo():
    from quanta.qintegrations.demo import run

    assert cli.DEMO_MODELS == tuple(run.MODELS_UNDER_TEST) == run.MODEL_NAMES
    assert cli.DEMO_WEIGHTS == run.WEIGHT_NAMES


def test_missing_package_names_it_and_the_nox_session():
    with pytest.raises(deps.MissingDemoDependency) as error:
        deps.require("quanta_no_such_package")
    assert "'quanta_no_such_package'" in str(error.value)
    assert "nox -s demo" in str(error.value)


def test_missing_package_makes_the_demo_exit_1_with_the_message(capsys, monkeypatch):
    from quanta.qintegrations.demo import run

    def missing(settings):
        deps.require("quanta_no_such_package")

    monkeypatch.setattr(run, "main", missing)
    assert cli.main(["demo", "--models", "minilm"]) == 1
    err = capsys.readouterr().err
    assert "quanta demo: error:" in err
    assert "nox -s demo" in err
