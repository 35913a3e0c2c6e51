"""Batch machinery shared by ``pathgen patch`` and ``pathgen embed``.

* Inputs: a slide file, a folder of slides, or a manifest CSV with a ``slide_path`` (or ``path``)
  column; relative paths in a CSV are resolved against the CSV's folder. slide_id = file name
  without its extension.
* Per-slide state in ``<out>/status/<stage>/<slide_id>.json`` (``running`` / ``done`` /
  ``failed``, with the config hash, outputs, error and timings). A re-run skips a slide whose
  status is ``done`` with the same config hash and whose outputs read back; anything else
  (``running`` after a crash, ``failed``, a changed config, a missing or unreadable output) is
  redone, after removing stale temp files. Outputs are written atomically, so a crash never
  leaves a file that looks finished.
* Errors: a ``SlideError`` (bad input: corrupt or truncated file, unsupported format, no tissue,
  missing MPP) is printed as one line and the batch goes on. Any other exception stops the batch
  with its traceback, unless ``--skip-errors`` is given (then it is logged and the batch goes on).
* Exit status: 0 every slide done or skipped, 2 some failed (the others finished), 1 usage error.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pathgen.slides.errors import SlideError
from pathgen.utils.io import atomic_write_text

#: file extensions taken from a folder (others are ignored).
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide",
                    ".dcm", ".btf", ".qptiff")

EXIT_OK, EXIT_USAGE, EXIT_FAILED = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input (exit status 1)."""


@dataclass
class Slide:
    """One slide to process."""

    slide_id: str
    path: Path


def slide_id_of(path: str | os.PathLike) -> str:
    """File name without its extension (``os.path.splitext``; never ``rstrip``)."""
    return os.path.splitext(Path(path).name)[0]


def resolve_inputs(inp: str | os.PathLike) -> list[Slide]:
    """Slides named by a file, a folder or a manifest CSV.

    Raises:
        UsageError: nothing found, a CSV without a path column, or duplicate slide ids.
    """
    inp = Path(inp)
    if not inp.exists():
        raise UsageError(f"{inp}: no such file or folder")
    if inp.is_dir():
        paths = sorted(p for p in inp.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_EXTENSIONS)
        if not paths:
            raise UsageError(f"{inp}: no slide files ({', '.join(SLIDE_EXTENSIONS[:5])}, ...) in this folder")
    elif inp.suffix.lower() == ".csv":
        with open(inp, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            col = next((c for c in ("slide_path", "path") if c in cols), None)
            if col is None:
                raise UsageError(f"{inp}: manifest needs a 'slide_path' or 'path' column "
                                 f"(found: {', '.join(cols) or 'none'})")
            paths = []
            for row in reader:
                value = (row.get(col) or "").strip()
                if value:
                    p = Path(value)
                    paths.append(p if p.is_absolute() else inp.parent / p)
        if not paths:
            raise UsageError(f"{inp}: manifest lists no slides")
    else:
        paths = [inp]
    slides = [Slide(slide_id_of(p), p) for p in paths]
    seen: dict[str, Path] = {}
    for s in slides:
        if s.slide_id in seen:
            raise UsageError(f"slide id {s.slide_id!r} appears twice ({seen[s.slide_id]} and {s.path}); slide ids "
                             "(file names without extension) must be unique")
        seen[s.slide_id] = s.path
    return slides


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def status_path(out: Path, stage: str, slide_id: str) -> Path:
    return out / "status" / stage / f"{slide_id}.json"


def read_status(out: Path, stage: str, slide_id: str) -> dict | None:
    p = status_path(out, stage, slide_id)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def write_status(out: Path, stage: str, slide_id: str, status: dict) -> None:
    atomic_write_text(status_path(out, stage, slide_id), json.dumps(status, indent=2, default=str))


def remove_stale_temps(paths: list[Path]) -> None:
    """Delete temp files left by an interrupted atomic write of any of ``paths``."""
    for p in paths:
        if p.parent.is_dir():
            for tmp in p.parent.glob(f".{p.name}.*.tmp*"):
                tmp.unlink(missing_ok=True)


@dataclass
class SlideResult:
    slide_id: str
    state: str  # done | skipped | failed
    seconds: float = 0.0
    error: str | None = None
    info: dict = field(default_factory=dict)


def is_done(out: Path, stage: str, slide_id: str, chash: str, check: Callable[[dict], bool],
            outputs: list[Path] | None = None) -> bool:
    """True when ``slide_id`` finished ``stage`` with this config and its outputs read back.

    ``outputs``: the files this run expects; they are checked instead of the paths the status
    recorded (which may point into another folder when ``out`` was copied or moved).
    """
    st = read_status(out, stage, slide_id)
    if not (st and st.get("state") == "done" and st.get("config_hash") == chash):
        return False
    return bool(check(st if outputs is None else {**st, "outputs": [str(p) for p in outputs]}))


def process_slide(out: Path, stage: str, slide: Slide, config: dict, outputs: list[Path],
                  work: Callable[[], dict], check: Callable[[dict], bool], force: bool = False) -> SlideResult:
    """Run ``work()`` for one slide unless it is already done; record its status.

    Args:
        out: output folder.
        stage: ``"patch"`` or ``"embed"``.
        slide: the slide.
        config: everything that determines the outputs (hashed for idempotency).
        outputs: files ``work`` writes (their stale temps are removed first).
        work: does the job, returns a JSON-able dict merged into the status.
        check: given a ``done`` status whose ``outputs`` are this call's ``outputs``, True when they are intact.
        force: redo even when done.

    Returns:
        a ``SlideResult``; a ``SlideError`` becomes a ``failed`` result, other exceptions propagate
        after the status records them.
    """
    chash = config_hash(config)
    if not force and is_done(out, stage, slide.slide_id, chash, check, outputs):
        return SlideResult(slide.slide_id, "skipped", info=read_status(out, stage, slide.slide_id) or {})
    remove_stale_temps(outputs)
    status = {"slide_id": slide.slide_id, "path": str(slide.path), "stage": stage, "state": "running",
              "config_hash": chash, "config": config, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "pid": os.getpid()}
    write_status(out, stage, slide.slide_id, status)
    t0 = time.perf_counter()
    try:
        info = work() or {}
    except SlideError as exc:
        status.update(state="failed", error=str(exc), seconds=round(time.perf_counter() - t0, 3))
        write_status(out, stage, slide.slide_id, status)
        return SlideResult(slide.slide_id, "failed", status["seconds"], str(exc))
    except BaseException as exc:
        msg = f"{slide.path}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        status.update(state="failed", error=msg, seconds=round(time.perf_counter() - t0, 3),
                      traceback=traceback.format_exc(limit=20))
        write_status(out, stage, slide.slide_id, status)
        raise
    status.update(state="done", seconds=round(time.perf_counter() - t0, 3),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **info)
    write_status(out, stage, slide.slide_id, status)
    return SlideResult(slide.slide_id, "done", status["seconds"], info=info)


def run_batch(out: Path, stage: str, slides: list[Slide], run_one: Callable[[Slide], SlideResult],
              skip_errors: bool, extra_summary: dict | None = None) -> int:
    """Process every slide with a progress bar, print and write the summary, return the exit status."""
    from tqdm import tqdm

    results: list[SlideResult] = []
    aborted = None
    bar = tqdm(slides, desc=f"{stage} slides", unit="slide", file=sys.stderr, dynamic_ncols=True)
    for slide in bar:
        bar.set_postfix_str(slide.slide_id[:40])
        try:
            res = run_one(slide)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported per slide; --skip-errors decides whether to go on
            msg = f"{slide.path}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            res = SlideResult(slide.slide_id, "failed", error=msg)
            if not skip_errors:
                results.append(res)
                tqdm.write(f"error: {msg}", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                aborted = slide.slide_id
                break
        if res.state == "failed":
            tqdm.write(f"error: {res.error}", file=sys.stderr)
        results.append(res)
    bar.close()
    done_ids = {r.slide_id for r in results}
    not_run = [s.slide_id for s in slides if s.slide_id not in done_ids]
    counts = {k: sum(r.state == k for r in results) for k in ("done", "skipped", "failed")}
    summary = {
        "stage": stage, **counts, "not_run": not_run, "aborted_at": aborted,
        "failed_slides": {r.slide_id: r.error for r in results if r.state == "failed"},
        "slides": {r.slide_id: {"state": r.state, "seconds": r.seconds,
                                **{k: v for k, v in r.info.items() if k in ("n_patches", "outputs", "patches_per_s")}}
                   for r in results},
        **(extra_summary or {}),
    }
    atomic_write_text(out / f"summary_{stage}.json", json.dumps(summary, indent=2, default=str))
    line = f"{stage}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
    if not_run:
        line += f", {len(not_run)} not run (stopped at {aborted}; rerun with --skip-errors to go past it)"
    print(line)
    for sid, err in summary["failed_slides"].items():
        print(f"  failed {sid}: {err}")
    print(f"summary: {out / f'summary_{stage}.json'}")
    return EXIT_FAILED if counts["failed"] or not_run else EXIT_OK


def writable_out(out: Path) -> None:
    """Create ``out`` and prove it takes files, before any slide is opened: an unwritable folder is the
    user's to fix, not a failure of every slide in turn.

    Raises:
        UsageError: ``out`` is a file, cannot be created, or cannot be written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; fix: choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".pathgen-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc}); fix: choose another --out or "
                         "change its permissions") from exc


def exit_1_on_usage_error(p: argparse.ArgumentParser) -> None:
    """Make argparse errors of this subcommand exit with 1 (argparse's default 2 means "some slides failed" here)."""
    def error(message: str):
        p.print_usage(sys.stderr)
        p.exit(EXIT_USAGE, f"{p.prog}: error: {message}\n")
    p.error = error  # type: ignore[method-assign]


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Input, output and patching options shared by ``patch`` and ``embed``."""
    exit_1_on_usage_error(p)
    p.add_argument("input", help="a slide file, a folder of slides, or a manifest CSV with a slide_path/path column")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--target-mpp", type=float, default=0.5, help="patch resolution in µm/px (0.5 = 20x; default 0.5)")
    p.add_argument("--patch-size", type=int, default=256, help="patch side in pixels at --target-mpp (default 256)")
    p.add_argument("--overlap", type=int, default=0, help="overlap between neighbouring patches, pixels (default 0)")
    p.add_argument("--min-tissue-fraction", type=float, default=0.25,
                   help="keep patches at least this fraction tissue (default 0.25)")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px for slides whose metadata has none")
    p.add_argument("--mpp-csv", type=Path, default=None,
                   help="per-slide MPP overrides (beat the metadata): CSV with columns slide_id,mpp")
    p.add_argument("--backend", default="auto", choices=("auto", "cucim", "openslide", "tifffile"),
                   help="slide reader (default auto: cuCIM, then OpenSlide, then tifffile)")
    p.add_argument("--sat-threshold", type=int, default=8, help="lowest saturation threshold for tissue (0-255)")
    p.add_argument("--min-tissue-mm2", type=float, default=0.05, help="drop tissue pieces smaller than this (mm²)")
    p.add_argument("--min-hole-mm2", type=float, default=0.01, help="fill holes smaller than this (mm²)")
    p.add_argument("--skip-errors", action="store_true",
                   help="log unexpected per-slide errors and go on (bad-input errors never stop the batch)")
    p.add_argument("--force", action="store_true", help="redo slides that are already done")
