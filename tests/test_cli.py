"""The `pathgen` command: one exit-code convention and one-line errors for bad input."""
from __future__ import annotations

import pytest

from pathgen.cli import build_parser, main


def test_bad_input_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PATHGEN_DEBUG", raising=False)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["evaluate", "--run", str(empty), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run.json" in err and "Traceback" not in err
    # the traceback stays available
    monkeypatch.setenv("PATHGEN_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["evaluate", "--run", str(empty), "--out", str(tmp_path / "o")])


def test_usage_errors_exit_1_not_2():
    """2 means "some items failed" for every command; argparse's own errors exit 1."""
    with pytest.raises(SystemExit) as e:
        main(["train-generator", "--out", "x", "--manifest", "m.csv", "--prediction", "bogus"])
    assert e.value.code == 1


def test_train_generator_options():
    ns = build_parser("train-generator").parse_args(["train-generator", "--out", "x", "--manifest", "m.csv",
                                                     "--max-patches", "none", "--prediction", "sample"])
    assert ns.max_patches is None and ns.prediction == "sample"
    assert "AdamW learning rate" in build_parser("train-generator")._subparsers._group_actions[0].choices[
        "train-generator"].format_help()
