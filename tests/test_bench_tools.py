"""``pathgen bench``: results loading, verdicts (two measurements), CLI exit codes, report files.

All inputs are hand-made pytest-benchmark JSON files; the one test of the re-run path replaces
the pytest subprocess with a stub that writes a canned measurement.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathgen.bench import cli
from pathgen.bench.compare import compare_runs, format_table
from pathgen.bench.results import is_judged, load_results, make_baseline

DN = "benchmarks/bench_denoise_step.py::test_denoise_step[B256xG1000-plain]"
CO = "benchmarks/bench_coattention.py::test_coattention[caseA-fp32]"
SL = "benchmarks/bench_slides.py::test_read[tifffile]"


def pytest_json(figures: dict[str, dict], *, load=1.0, device="cpu") -> dict:
    """A minimal ``--benchmark-json`` document: {node id: extra_info}."""
    benches = []
    for name, extra in figures.items():
        benches.append({"group": None, "name": name.split("::")[1], "fullname": name,
                        "params": {"B": 256}, "param": name.split("[")[1].rstrip("]"),
                        "extra_info": {"label": name.split("::")[1], "size": "small", "probe_read_GBps": 9.9,
                                       "fused_ms": 0.5, **extra},
                        "stats": {"min": 4e-4, "max": 9e-4, "mean": 5e-4, "stddev": 1e-4, "median": 5e-4,
                                  "iqr": 1e-4, "rounds": 10}})
    return {"machine_info": {"node": "vm", "system": "Linux", "release": "6", "machine": "x86_64",
                             "python_version": "3.11.7", "cpu": {"brand_raw": "AMD EPYC", "count": 2},
                             "pathgen": {"pathgen": "0.1.0", "torch": "2.13.0+cpu", "threads": 1,
                                         "bench_device": device, "gpu": None, "loadavg": [load, load, load],
                                         "run": {"bench_size": "small", "bench_device": device, "bench_threads": 1,
                                                 "k": None, "paths": ["benchmarks"]}}},
            "commit_info": {"id": "abc1234567", "dirty": False, "branch": "main", "time": "2026-11-27"},
            "benchmarks": benches, "datetime": "2026-11-27T10:00:00", "version": "5.3.1"}


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


BASE = {DN: {"speedup_vs_twin": 4.0, "speedup_vs_compiled": 2.0, "pct_of_floor": 80.0},
        CO: {"speedup_vs_twin": 10.0, "pct_of_floor": 50.0}}


def current(dn_twin=4.0, co_twin=10.0, extra=None):
    doc = {DN: {"speedup_vs_twin": dn_twin, "speedup_vs_compiled": 2.0, "pct_of_floor": 80.0},
           CO: {"speedup_vs_twin": co_twin, "pct_of_floor": 50.0}}
    doc.update(extra or {})
    return doc


@pytest.fixture
def files(tmp_path):
    def make(name, figures, **kw):
        return write(tmp_path / f"{name}.json", pytest_json(figures, **kw))
    return make


def test_judged_figures_are_ratios_only(files):
    assert is_judged("speedup_vs_twin") and is_judged("speedup_vs_openslide_cucim_single") and is_judged("pct_of_floor")
    assert not is_judged("fused_ms") and not is_judged("GBps") and not is_judged("slides_per_s")
    res = load_results(files("a", BASE))
    b = res.benchmarks[DN]
    assert b.figures == BASE[DN]
    assert b.info["fused_ms"] == 0.5 and "label" not in b.info and b.size == "small"
    assert b.kernel == "denoise_step" and b.case == "B256xG1000-plain"
    assert b.stats_ms["median"] == pytest.approx(0.5)
    assert res.versions["torch"] == "2.13.0+cpu" and res.commit["id"] == "abc1234567"
    assert res.runs == [{"bench_size": "small", "bench_device": "cpu", "bench_threads": 1, "k": None,
                         "paths": ["benchmarks"]}]


def test_verdicts_improved_ok_and_threshold_edges(files):
    base = load_results(files("base", BASE))
    cmp = compare_runs(base, [load_results(files("cur", current(dn_twin=4.0 * 1.25, co_twin=10.0 * 0.91)))])
    verdict = {(r.benchmark, r.figure): r.verdict for r in cmp.rows}
    assert verdict[(DN, "speedup_vs_twin")] == "improved"
    assert verdict[(CO, "speedup_vs_twin")] == "ok"  # -9%: inside the 10% threshold
    assert verdict[(DN, "pct_of_floor")] == "ok"
    assert not cmp.regressed and cmp.exit_code == 0 and not cmp.needs_rerun()


def test_regression_needs_two_measurements(files):
    base = load_results(files("base", BASE))
    slow = load_results(files("slow", current(dn_twin=4.0 * 0.6)))
    slow_again = load_results(files("slow2", {DN: {"speedup_vs_twin": 4.0 * 0.7}}))
    fine_again = load_results(files("fine2", {DN: {"speedup_vs_twin": 4.0 * 0.97}}))

    once = compare_runs(base, [slow])
    assert [r.verdict for r in once.rows if r.figure == "speedup_vs_twin" and r.benchmark == DN] == ["unconfirmed"]
    assert once.needs_rerun() == [DN] and once.exit_code == 0

    twice = compare_runs(base, [slow, slow_again])
    row = next(r for r in twice.rows if r.benchmark == DN and r.figure == "speedup_vs_twin")
    assert row.verdict == "REGRESSED" and row.current == [pytest.approx(2.4), pytest.approx(2.8)]
    assert twice.regressed and twice.exit_code == 1
    assert "FAIL" in format_table(twice) and "REGRESSED" in format_table(twice)

    blip = compare_runs(base, [slow, fine_again])
    row = next(r for r in blip.rows if r.benchmark == DN and r.figure == "speedup_vs_twin")
    assert row.verdict == "noise" and blip.exit_code == 0
    assert "PASS" in format_table(blip)

    strict = compare_runs(base, [slow], needed=1)  # --measurements 1: one is enough
    assert strict.exit_code == 1


def test_pct_of_floor_has_its_own_threshold(files):
    base = load_results(files("base", BASE))
    dips = [load_results(files(f"d{i}", {DN: {**BASE[DN], "pct_of_floor": 80.0 * f}}))
            for i, f in enumerate((0.8, 0.78))]
    rows = {r.figure: r.verdict for r in compare_runs(base, dips).rows if r.benchmark == DN}
    assert rows["pct_of_floor"] == "ok"  # -20%, -22%: inside the default 25%
    drops = [load_results(files(f"x{i}", {DN: {**BASE[DN], "pct_of_floor": 80.0 * f}}))
             for i, f in enumerate((0.5, 0.6))]
    assert compare_runs(base, drops).exit_code == 1
    assert compare_runs(base, dips, floor_threshold=0.10).exit_code == 1


def test_missing_new_and_unjudged_are_listed_not_failed(files):
    base = load_results(files("base", {**BASE, SL: {"tifffile_single_pps": 100.0}}))
    new = "benchmarks/bench_generator.py::test_generator_sampling[small]"
    cur = load_results(files("cur", {DN: BASE[DN], SL: {"tifffile_single_pps": 50.0},
                                     new: {"speedup_vs_published": 80.0}}))
    cmp = compare_runs(base, [cur])
    assert cmp.missing == [CO] and cmp.new == [new] and cmp.unjudged == [SL]
    assert cmp.exit_code == 0
    text = format_table(cmp)
    assert "missing" in text and "bench_coattention.py::test_coattention[caseA-fp32]" in text
    assert "bench_generator.py::test_generator_sampling[small]" in text
    # a figure that disappeared from a measured benchmark is listed as missing, not failed
    cur2 = load_results(files("cur2", {DN: {"speedup_vs_twin": 4.0}, CO: BASE[CO]}))
    rows = {(r.benchmark, r.figure): r.verdict for r in compare_runs(base, [cur2]).rows}
    assert rows[(DN, "speedup_vs_compiled")] == "missing" and rows[(DN, "pct_of_floor")] == "missing"


def test_cli_save_then_compare_exit_codes(files, tmp_path, capsys):
    bl = tmp_path / "baselines"
    assert cli.script_main(["--baselines-dir", str(bl), "save", "box", "--from-json", str(files("b", BASE))]) == 0
    saved = json.loads((bl / "box.json").read_text())
    assert saved["schema"] == "pathgen-bench-baseline/1" and saved["name"] == "box"
    assert saved["machine"]["cpu"] == "AMD EPYC" and saved["versions"]["torch"] == "2.13.0+cpu"
    assert saved["commit"]["id"] == "abc1234567" and saved["runs"][0]["bench_threads"] == 1
    assert saved["benchmarks"][DN]["figures"]["speedup_vs_twin"] == 4.0
    assert saved["benchmarks"][DN]["info"]["fused_ms"] == 0.5  # ms kept for information
    # no silent overwrite
    assert cli.script_main(["--baselines-dir", str(bl), "save", "box", "--from-json", str(files("b", BASE))]) == 2

    slow, slow2 = files("s1", current(co_twin=5.0)), files("s2", current(co_twin=6.0))
    fine = files("f", current(co_twin=9.8))
    args = ["--baselines-dir", str(bl)]
    # compare implied when the first argument is not a subcommand (gpu_check.sh's form)
    assert cli.script_main([*args, "box", str(slow), str(slow2)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "-50.0%" in out and "FAIL" in out
    assert cli.script_main([*args, "compare", "box", str(slow), str(fine)]) == 0
    assert "noise" in capsys.readouterr().out
    # a single measurement never fails when re-running is off
    assert cli.script_main([*args, "compare", "box", str(slow), "--no-rerun"]) == 0
    assert "unconfirmed" in capsys.readouterr().out
    md = tmp_path / "table.md"
    assert cli.script_main([*args, "compare", "box", str(fine), "--markdown", str(md)]) == 0
    assert md.read_text().startswith("| benchmark | figure |")
    # unknown baseline: a clear error, exit 2
    assert cli.script_main([*args, "compare", "nope", str(fine)]) == 2
    assert "no baseline 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("rerun_twin,expected", [(5.5, 1), (9.9, 0)], ids=["confirmed", "not-confirmed"])
def test_cli_reruns_only_the_regressed_benchmarks(files, tmp_path, monkeypatch, rerun_twin, expected):
    bl = tmp_path / "baselines"
    assert cli.script_main(["--baselines-dir", str(bl), "save", "box", "--from-json", str(files("b", BASE))]) == 0
    calls = []

    def fake_run_suite(root, *, targets=None, json_path=None, bench_threads=None, bench_device="cpu", **kw):
        calls.append({"targets": targets, "threads": bench_threads, "device": bench_device, **kw})
        write(json_path, pytest_json({CO: {"speedup_vs_twin": rerun_twin, "pct_of_floor": 50.0}}))
        return 0, json_path

    monkeypatch.setattr(cli, "run_suite", fake_run_suite)
    rc = cli.script_main(["--baselines-dir", str(bl), "compare", "box", str(files("s1", current(co_twin=5.0)))])
    assert rc == expected
    assert len(calls) == 1 and calls[0]["targets"] == [CO]  # only the regressed one, measured again
    assert calls[0]["threads"] == 1 and calls[0]["device"] == "cpu" and calls[0]["bench_size"] == "all"


def test_repeats_give_median_and_spread_which_widens_the_limit(files, tmp_path):
    reps = [files(f"r{i}", {DN: {"speedup_vs_twin": v, "pct_of_floor": 80.0}}) for i, v in enumerate((3.0, 4.0, 3.6))]
    bl = tmp_path / "baselines"
    assert cli.script_main(["--baselines-dir", str(bl), "save", "box", "--as-repeats",
                            "--from-json", *map(str, reps)]) == 0
    base = load_results(bl / "box.json")
    assert base.benchmarks[DN].figures["speedup_vs_twin"] == pytest.approx(3.6)  # the median
    assert base.benchmarks[DN].spread["speedup_vs_twin"] == pytest.approx(1.0 / 3.6, abs=1e-4)
    # -20% twice: beyond 10%, but inside the 28% the baseline itself spread over -> not a regression
    low = [load_results(files(f"l{i}", {DN: {"speedup_vs_twin": 3.6 * 0.8, "pct_of_floor": 80.0}})) for i in range(2)]
    row = next(r for r in compare_runs(base, low).rows if r.figure == "speedup_vs_twin")
    assert row.verdict == "ok" and row.limit == pytest.approx(1.0 / 3.6, abs=1e-4)
    lower = [load_results(files(f"m{i}", {DN: {"speedup_vs_twin": 3.6 * 0.5, "pct_of_floor": 80.0}})) for i in range(2)]
    assert compare_runs(base, lower).exit_code == 1


def test_cli_save_append_merges(files, tmp_path):
    bl = tmp_path / "baselines"
    assert cli.script_main(["--baselines-dir", str(bl), "save", "box",
                            "--from-json", str(files("a", {DN: BASE[DN]}))]) == 0
    assert cli.script_main(["--baselines-dir", str(bl), "save", "box", "--append",
                            "--from-json", str(files("b", {CO: BASE[CO]}))]) == 0
    assert set(load_results(bl / "box.json").benchmarks) == {DN, CO}


def test_make_baseline_round_trips(files, tmp_path):
    res = load_results(files("a", BASE))
    p = write(tmp_path / "bl.json", make_baseline(res, "x"))
    back = load_results(p)
    assert back.kind == "baseline" and back.name == "x"
    assert {k: v.figures for k, v in back.benchmarks.items()} == BASE
    assert compare_runs(back, [res]).count("ok") == 5


def test_bad_inputs_raise_clear_errors(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="neither a pytest-benchmark JSON"):
        load_results(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing.json")
    res = load_results(write(tmp_path / "a.json", pytest_json(BASE)))
    with pytest.raises(ValueError, match="thresholds"):
        compare_runs(res, [res], threshold=1.5)


def test_busy_machine_is_flagged(files):
    assert load_results(files("busy", BASE, load=6.5)).busy() == "load average 6.5 on 2 cores"
    assert load_results(files("quiet", BASE, load=0.5)).busy() is None


def test_report_writes_markdown_and_png(files, tmp_path, capsys):
    gen = "benchmarks/bench_generator.py::test_generator_sampling[small]"
    co = {**BASE[CO], "pct_of_roofline": 42.4, "roofline_bound": "fma"}
    src = files("r", {**BASE, CO: co, gen: {"speedup_vs_published": 75.0}, SL: {"speedup_vs_openslide_cucim": 2.5}})
    out = tmp_path / "report"
    assert cli.script_main(["report", str(src), "--out", str(out)]) == 0
    md = (out / "speedups.md").read_text()
    assert ("| kernel | case | size | device | vs twin | vs compiled | vs published | other ratios | % of floor "
            "| % of roofline | time (ms) |") in md
    assert "| denoise_step | B256xG1000-plain | small | cpu | 4.0x | 2.0x |  |  | 80% |  | 0.5 |" in md
    assert "| 10.0x |  |  |  | 50% | 42% (f) | 0.5 |" in md  # coattention: roofline info, bound by multiply-adds
    assert "| generator_sampling | small | small | cpu |  |  | 75.0x |" in md
    assert "| read | tifffile | small | cpu |  |  |  | openslide_cucim 2.5x |" in md
    assert "commit abc1234567" in md and "![speedups](speedups.png)" in md
    png = (out / "speedups.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # `pathgen bench --report FILE` is the same
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--report", str(src)])
    assert args.report == [str(src)] and args.bench_command is None
    args.out = str(tmp_path / "report2")
    assert cli.main(args) == 0 and (tmp_path / "report2" / "speedups.png").exists()
