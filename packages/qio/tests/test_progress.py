"""Progress bars of save and load: shown for a phase over a second, never for a small file."""

import pytest

from quanta.qio import load, save


@pytest.fixture
def bars_at_once(monkeypatch):
    """Bars shown from the first step: stands for a save or load that runs over a second."""
    monkeypatch.setattr("quanta.qmodules.progress.DELAY_S", 0.0)


def test_loading_a_small_file_prints_nothing(frozen_mlp, meta_mlp, tmp_path, capsys):
    save(frozen_mlp(), tmp_path, progress=False)
    capsys.readouterr()  # building the model may take a second (torch's first imports)
    load(tmp_path, meta_mlp())  # progress=True by default: the 5 KB load of issue 17
    assert capsys.readouterr().err == ""


def test_a_long_save_and_load_show_a_bar_each(bars_at_once, frozen_mlp, meta_mlp, tmp_path, capsys):
    model = frozen_mlp()
    capsys.readouterr()
    save(model, tmp_path, max_shard_size="10KB")
    saved = capsys.readouterr().err
    assert "save:" in saved and "B/s" in saved and "load" not in saved
    load(tmp_path, meta_mlp())
    loaded = capsys.readouterr().err
    assert "load" in loaded and "B/s" in loaded and "save" not in loaded


def test_no_bar_with_progress_false(bars_at_once, frozen_mlp, meta_mlp, tmp_path, capsys):
    model = frozen_mlp()
    capsys.readouterr()
    save(model, tmp_path, progress=False)
    load(tmp_path, meta_mlp(), progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flag", ["overwrite", "progress"])
def test_flags_that_are_not_bools_are_refused_before_anything_is_written(
    frozen_mlp, meta_mlp, tmp_path, flag
):
    with pytest.raises(TypeError, match=f"{flag} must be True or False, got 'no'"):
        save(frozen_mlp(), tmp_path / "out", **{flag: "no"})
    assert not (tmp_path / "out").exists()
    save(frozen_mlp(), tmp_path / "saved", progress=False)
    with pytest.raises(TypeError, match="progress must be True or False, got 1"):
        load(tmp_path / "saved", meta_mlp(), progress=1)
