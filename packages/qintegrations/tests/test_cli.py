"""The `quanta` command line: argument errors are explained and exit with status 2."""

import pytest

from quanta.qintegrations import cli


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("option", ["--tokens", "--window"])
def test_sizes_must_be_positive(capsys, option, tmp_path):
    assert "positive integer" in _usage_error(capsys, ["eval", option, "0", str(tmp_path)])


def test_a_subcommand_is_required(capsys):
    assert "required" in _usage_error(capsys, [])


def test_unknown_subcommand(capsys):
    assert "invalid choice" in _usage_error(capsys, ["bench"])


def test_the_demo_is_not_a_subcommand(capsys):
    assert "invalid choice" in _usage_error(capsys, ["demo"])


def test_the_listed_choices_are_what_quanta_accepts():
    from quanta.qmodules import ACTIVATION_MODES
    from quanta.qtypes import SYMMETRIC, qtype_names, to_qtype

    assert list(cli.WEIGHT_QTYPES) == qtype_names()  # sorted, as help lists them
    one_scale = [name for name in qtype_names() if to_qtype(name).layout == SYMMETRIC]
    assert list(cli.ACTIVATION_QTYPES) == one_scale
    assert cli.ACTIVATION_MODES == ACTIVATION_MODES
