"""pathgen demo resumes only under the configuration that made its folder."""
from __future__ import annotations

import dataclasses
import json

import pytest

from pathgen.pipelines.demo import DemoConfig, check_same_config


def test_demo_refuses_another_configuration_in_its_folder(tmp_path):
    quick = DemoConfig.quick()
    check_same_config(tmp_path / "new", quick)  # nothing there yet
    (tmp_path / "config.json").write_text(json.dumps({"demo": dataclasses.asdict(quick), "device": "cpu"}))
    check_same_config(tmp_path, quick)  # same options: resume
    with pytest.raises(ValueError, match=r"another configuration \(differ: .*cases.*--overwrite"):
        check_same_config(tmp_path, DemoConfig())
    with pytest.raises(ValueError, match="too few for 3 folds"):
        check_same_config(tmp_path / "small", dataclasses.replace(quick, cases=3))


def test_overwrite_deletes_only_a_demo_run_and_only_with_valid_options(tmp_path):
    """A model folder has a config.json too; and an invalid option must not have deleted anything."""
    from pathgen.cli import main

    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["ViTModel"]}')
    precious = tmp_path / "precious"  # no config.json at all
    precious.mkdir()
    (precious / "data.csv").write_text("x")
    for folder, kept in ((hf, "config.json"), (precious, "data.csv")):
        assert main(["demo", "--out", str(folder), "--overwrite", "--quick"]) == 1
        assert (folder / kept).exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"demo": dataclasses.asdict(DemoConfig.quick())}))
    (run / "stage_times.json").write_text("{}")
    assert main(["demo", "--out", str(run), "--overwrite", "--quick", "--cases", "3"]) == 1
    assert (run / "stage_times.json").exists()  # too few cases: refused before deleting
