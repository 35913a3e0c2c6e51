"""``pathgen bench``: save a baseline, compare against it, render the speedup table.

    pathgen bench save NAME [--bench-size small] [--append] [--from-json RESULTS.json ...]
    pathgen bench compare BASELINE [CURRENT.json ...] [--threshold 0.10]
    pathgen bench report [RESULTS.json ...]          (or: pathgen bench --report [RESULTS.json ...])
    pathgen bench run [--bench-size small]           (run the suite, keep the JSON, print its path)

BASELINE is a name in ``benchmarks/baselines/`` or a path (a baseline or any ``--benchmark-json``).
``python benchmarks/compare.py ...`` is the same command from a checkout (``compare`` is implied
when the first argument is not a subcommand).

Exit codes: 0 = no confirmed regression; 1 = a judged figure regressed beyond the threshold in
two measurements; 2 = the suite failed or an input is unusable.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from pathgen.bench.compare import compare_runs, format_table
from pathgen.bench.results import Results, combine_repeats, load_results, make_baseline, merge_results
from pathgen.utils.io import atomic_write_text

SUBCOMMANDS = ("save", "compare", "report", "run")


def repo_root() -> Path:
    """The checkout holding ``benchmarks/conftest.py``: the working directory or one above it,
    else the folder above the installed package (editable installs)."""
    for base in [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]:
        if (base / "benchmarks" / "conftest.py").exists():
            return base
    raise FileNotFoundError("no benchmarks/conftest.py here or above: run `pathgen bench` inside a pathgen checkout")


def results_dir(root: Path) -> Path:
    return root / ".benchmarks" / "pathgen"  # git-ignored (.benchmarks/)


def resolve_baseline(spec: str, baselines_dir: Path) -> Path:
    p = Path(spec)
    if p.exists():
        return p
    cand = baselines_dir / (spec if spec.endswith(".json") else f"{spec}.json")
    if cand.exists():
        return cand
    have = sorted(x.stem for x in baselines_dir.glob("*.json")) if baselines_dir.is_dir() else []
    raise FileNotFoundError(f"no baseline {spec!r} (neither a file nor {cand}); saved baselines: {have or 'none'}")


def run_suite(root: Path, *, bench_size: str = "small", bench_device: str = "cpu", bench_threads: int | None = None,
              k: str | None = None, targets: list[str] | None = None, json_path: Path | None = None,
              quiet: bool = False, pytest_args: list[str] | None = None) -> tuple[int, Path]:
    """Run the benchmark suite with pytest in ``root``; returns (pytest exit code, JSON path).

    A run that crashes before writing its JSON (a signal: negative exit code) is tried once more.
    """
    if json_path is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        json_path = results_dir(root) / f"{stamp}-{bench_device.replace(':', '')}-{bench_size}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", *(targets or ["benchmarks"]), "-q", "-p", "no:cacheprovider",
           "--bench-size", bench_size, "--bench-device", bench_device, "--benchmark-json", str(json_path)]
    if bench_threads:
        cmd += ["--bench-threads", str(bench_threads)]
    if k:
        cmd += ["-k", k]
    cmd += list(pytest_args or [])
    for attempt in range(2):
        print("$ " + " ".join(cmd), flush=True)
        if quiet:
            proc = subprocess.run(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            print("\n".join(proc.stdout.splitlines()[-5:]), flush=True)
        else:
            proc = subprocess.run(cmd, cwd=root)
        if proc.returncode >= 0 or json_path.exists() or attempt:
            return proc.returncode, json_path
        print(f"pytest crashed (signal {-proc.returncode}) before writing results; trying once more", flush=True)
    return proc.returncode, json_path


def _run_spec(spec: dict, args: argparse.Namespace) -> dict:
    """A recorded run spec with command-line overrides applied."""
    out = {"bench_size": "small", "bench_device": "cpu", "bench_threads": None, "k": None, "paths": ["benchmarks"],
           **(spec or {})}
    for key, val in (("bench_size", args.bench_size), ("bench_device", args.bench_device),
                     ("bench_threads", args.bench_threads), ("k", args.k)):
        if val is not None:
            out[key] = val
    if getattr(args, "paths", None):
        out["paths"] = list(args.paths)
    return out


def _measure(root: Path, specs: list[dict], quiet: bool) -> tuple[int, Results | None]:
    parts, worst = [], 0
    for spec in specs:
        rc, path = run_suite(root, bench_size=spec["bench_size"], bench_device=spec["bench_device"],
                             bench_threads=spec["bench_threads"], k=spec["k"], targets=spec["paths"], quiet=quiet)
        if rc not in (0, 5):
            print(f"benchmark suite failed (pytest exit code {rc}); see the output above", file=sys.stderr)
            worst = rc
        if path.exists():
            parts.append(load_results(path))
    return worst, (merge_results(parts) if parts else None)


def cmd_save(args: argparse.Namespace) -> int:
    root = repo_root()
    out = Path(args.baselines_dir or root / "benchmarks" / "baselines") / f"{args.name}.json"
    if args.from_json:
        parts = [load_results(p) for p in args.from_json]
        res = combine_repeats(parts) if args.as_repeats else merge_results(parts)
    else:
        repeats = []
        for i in range(args.repeat):
            if args.repeat > 1:
                print(f"== measurement {i + 1} of {args.repeat}", flush=True)
            rc, one = _measure(root, [_run_spec({}, args)], args.quiet)
            if rc or one is None:
                print("not saving a baseline from a failing suite", file=sys.stderr)
                return 2
            repeats.append(one)
        res = combine_repeats(repeats) if len(repeats) > 1 else repeats[0]
    if not res.benchmarks:
        print("no benchmarks ran: nothing to save", file=sys.stderr)
        return 2
    if args.append and out.exists():
        res = merge_results([load_results(out), res])
    elif out.exists() and not args.force:
        print(f"{out} exists: pass --force to replace it or --append to add to it", file=sys.stderr)
        return 2
    payload = make_baseline(res, args.name)
    atomic_write_text(out, json.dumps(payload, indent=1, sort_keys=False) + "\n")
    n_fig = sum(len(b.figures) for b in res.benchmarks.values())
    print(f"saved baseline {args.name!r}: {len(res.benchmarks)} benchmarks, {n_fig} judged figures -> {out}")
    for name, b in sorted(res.benchmarks.items()):
        figs = ", ".join(f"{k}={v:.3g}" + (f" (spread {100 * b.spread[k]:.0f}%)" if k in b.spread else "")
                         for k, v in sorted(b.figures.items()))
        print(f"  {name}: {figs or '(no judged figures)'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    root = repo_root()
    base_path = resolve_baseline(args.baseline, Path(args.baselines_dir or root / "benchmarks" / "baselines"))
    baseline = load_results(base_path)
    suite_rc = 0
    if args.current:
        measurements = [load_results(p) for p in args.current]
    else:
        specs = [_run_spec(s, args) for s in (baseline.runs or [{}])]
        suite_rc, res = _measure(root, specs, args.quiet)
        if res is None:
            print("the benchmark suite produced no results", file=sys.stderr)
            return 2
        measurements = [res]
    if baseline.machine_kind() != measurements[0].machine_kind():
        print(f"warning: baseline measured on {baseline.machine_kind()}, current on "
              f"{measurements[0].machine_kind()}; ratios may not be comparable", file=sys.stderr)
    for what, res in (("baseline", baseline), ("current", measurements[0])):
        if res.busy():
            print(f"warning: the {what} was measured on a busy machine ({res.busy()}); ratios to references made "
                  "of many small ops drift when cores are shared", file=sys.stderr)
    cmp = compare_runs(baseline, measurements, threshold=args.threshold, needed=args.measurements,
                       floor_threshold=args.floor_threshold)
    while cmp.needs_rerun() and not args.no_rerun and len(measurements) < args.measurements:
        again = cmp.needs_rerun()
        print(f"\n{len(again)} benchmark(s) regressed beyond their threshold; measuring them again to confirm:",
              flush=True)
        spec = _run_spec(measurements[0].runs[0] if measurements[0].runs else {}, args)
        with tempfile.TemporaryDirectory() as tmp:
            rc, path = run_suite(root, bench_size="all", bench_device=spec["bench_device"],
                                 bench_threads=spec["bench_threads"], targets=again,
                                 json_path=Path(tmp) / "rerun.json", quiet=args.quiet)
            rerun = load_results(path) if path.exists() else Results(benchmarks={})
        if not rerun.benchmarks:
            print(f"re-run produced no results (pytest exit code {rc}); regressions stay unconfirmed", file=sys.stderr)
            break
        measurements.append(rerun)
        cmp = compare_runs(baseline, measurements, threshold=args.threshold, needed=args.measurements,
                       floor_threshold=args.floor_threshold)
    print(f"\nbaseline: {base_path} ({baseline.machine_kind()}, commit {(baseline.commit.get('id') or '?')[:10]})")
    print(f"current:  {', '.join(m.source for m in measurements)}\n")
    table = format_table(cmp)
    print(table)
    if args.markdown:
        atomic_write_text(args.markdown, format_table(cmp, markdown=True) + "\n")
    if suite_rc:
        print(f"the benchmark suite itself failed (pytest exit code {suite_rc})", file=sys.stderr)
        return 2 if not cmp.regressed else 1
    return cmp.exit_code


def latest_results(root: Path) -> Path:
    cands = list(results_dir(root).glob("*.json")) + list((root / ".ci" / "artifacts").glob("benchmarks*.json"))
    if not cands:
        raise FileNotFoundError("no benchmark results yet: run `pathgen bench run` (or pass a --benchmark-json file)")
    return max(cands, key=lambda p: p.stat().st_mtime)


def cmd_report(args: argparse.Namespace, files: list[str] | None = None) -> int:
    from pathgen.bench.report import write_report

    root = repo_root()
    paths = [Path(p) for p in (files or [])] or [latest_results(root)]
    results = [load_results(p) for p in paths]
    out_dir = Path(args.out or root / "benchmarks" / "report")
    md, png = write_report(results, out_dir)
    print(md.read_text())
    print(f"wrote {md} and {png}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    root = repo_root()
    spec = _run_spec({}, args)
    rc, path = run_suite(root, bench_size=spec["bench_size"], bench_device=spec["bench_device"],
                         bench_threads=spec["bench_threads"], k=spec["k"], targets=spec["paths"],
                         json_path=Path(args.json) if args.json else None, quiet=args.quiet)
    print(f"results: {path}")
    return 0 if rc in (0, 5) else 2


def _add_suite_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    p.add_argument("--bench-size", choices=["small", "realistic", "all"], default="small" if defaults else None,
                   help="benchmark sizes to run" + ("" if defaults else " (default: as recorded in the baseline)"))
    p.add_argument("--bench-device", default="cpu" if defaults else None,
                   help="cpu or cuda" + ("" if defaults else " (default: as recorded in the baseline)"))
    p.add_argument("--bench-threads", type=int, default=None,
                   help="torch CPU threads (baselines on shared 2-core VMs use 1; default: "
                        + ("torch's own)" if defaults else "as recorded in the baseline)"))
    p.add_argument("-k", default=None, help="pytest -k expression selecting benchmarks")
    p.add_argument("--paths", nargs="+", default=None, help="benchmark files or node ids (default: benchmarks)")
    p.add_argument("--quiet", action="store_true", help="print only the tail of pytest's output")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("--report", nargs="*", metavar="RESULTS", default=None,
                   help="render benchmarks/report/speedups.{md,png} from RESULTS (default: the latest run)")
    p.add_argument("--baselines-dir", default=None, help="default: benchmarks/baselines")
    sub = p.add_subparsers(dest="bench_command", metavar="{save,compare,report,run}")

    s = sub.add_parser("save", help="run the suite (or read --from-json) and save a named baseline")
    s.add_argument("name")
    s.add_argument("--from-json", nargs="+", default=None, help="existing --benchmark-json file(s) instead of running")
    s.add_argument("--repeat", type=int, default=1,
                   help="measure N times; keep per figure the median and the spread (kept baselines: 3)")
    s.add_argument("--as-repeats", action="store_true",
                   help="treat several --from-json files as repeats of one suite (median + spread), not a union")
    s.add_argument("--append", action="store_true", help="add to an existing baseline of that name")
    s.add_argument("--force", action="store_true", help="replace an existing baseline of that name")
    _add_suite_options(s, defaults=True)
    s.set_defaults(_bench=cmd_save)

    c = sub.add_parser("compare", help="measure the working tree (or read CURRENT) and judge it against BASELINE")
    c.add_argument("baseline", help="baseline name (benchmarks/baselines/NAME.json) or path")
    c.add_argument("current", nargs="*", help="measurement JSON file(s); default: run the suite now")
    c.add_argument("--threshold", type=float, default=0.10,
                   help="relative drop of a speedup_vs_* ratio that counts (default 0.10)")
    c.add_argument("--floor-threshold", type=float, default=0.25,
                   help="relative drop of pct_of_floor that counts (default 0.25: see pathgen/bench/compare.py)")
    c.add_argument("--measurements", type=int, default=2,
                   help="measurements a regression must show in before failing (2: the run + one re-run)")
    c.add_argument("--no-rerun", action="store_true", help="never re-run; regressions then stay unconfirmed")
    c.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    _add_suite_options(c, defaults=False)
    c.set_defaults(_bench=cmd_compare)

    r = sub.add_parser("report", help="Markdown table + bar chart of the latest (or given) results")
    r.add_argument("results", nargs="*")
    r.add_argument("--out", default=None, help="output folder (default: benchmarks/report)")
    r.set_defaults(_bench=lambda a: cmd_report(a, a.results))

    u = sub.add_parser("run", help="run the suite and keep its JSON under .benchmarks/pathgen/")
    u.add_argument("--json", default=None, help="where to write the JSON")
    _add_suite_options(u, defaults=True)
    u.set_defaults(_bench=cmd_run)


def main(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "report", None) is not None and not getattr(args, "bench_command", None):
            args.out = getattr(args, "out", None)
            return cmd_report(args, args.report)
        fn = getattr(args, "_bench", None)
        if fn is None:
            print("usage: pathgen bench {save,compare,report,run} ... (see pathgen bench -h)", file=sys.stderr)
            return 2
        return int(fn(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pathgen bench: {exc}", file=sys.stderr)
        return 2


def script_main(argv: list[str] | None = None) -> int:
    """``python benchmarks/compare.py``: ``compare`` is implied when no subcommand is named."""
    argv = list(sys.argv[1:] if argv is None else argv)
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-h", "--help", "--report"):
        i += 2 if argv[i] == "--baselines-dir" else 1
    if i < len(argv) and not argv[i].startswith("-") and argv[i] not in SUBCOMMANDS:
        argv.insert(i, "compare")
    parser = argparse.ArgumentParser(prog="benchmarks/compare.py")
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(script_main())
