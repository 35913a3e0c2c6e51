"""The ``pathgen`` command: one entry point, one subcommand per job.

Each subcommand lives in a module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
register it in ``COMMANDS`` below (name -> (module, one-line help)).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from pathgen.pipelines.slide_batch import EXIT_USAGE, exit_1_on_usage_error

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("pathgen.info", "versions, compiled kernels (CPU/CUDA), threads, GPU and slide backends"),
    "demo": ("pathgen.pipelines.demo", "the main job: run the demo end to end"),
    "patch": ("pathgen.pipelines.patch", "segment tissue and write patch coordinates at a target µm/px"),
    "embed": ("pathgen.pipelines.embed", "embed patches into CLAM/TRIDENT-compatible HDF5 feature bags"),
    "families": ("pathgen.pipelines.families", "gene-family match report (signature genes found in a table)"),
    "make-demo-cohort": ("pathgen.pipelines.make_demo_cohort", "real TCGA expression + slides that encode it"),
    "train-generator": ("pathgen.pipelines.train_generator", "train the PathGen generator on one fold"),
    "synthesize": ("pathgen.pipelines.synthesize", "synthesize expression from patch bags"),
    "synthesize-cohort": ("pathgen.pipelines.synthesize_cohort", "streaming, resumable, torchrun-sharded cohort synthesis"),
    "evaluate-generator": ("pathgen.pipelines.evaluate_generator", "fidelity of synthesized expression vs baselines"),
    "heatmap": ("pathgen.pipelines.heatmap", "co-attention heatmaps, top-k patch montages, distributed risk/grade maps"),
    "report": ("pathgen.pipelines.report", "one self-contained HTML report of a run folder"),
    "train-predictor": ("pathgen.pipelines.train_predictor", "k-fold CV of a grade + survival predictor"),
    "evaluate": ("pathgen.pipelines.evaluate_predictor", "slide-only vs slide+real vs slide+synth, with statistics"),
    "bench": ("pathgen.bench.cli", "performance benchmarks: save a baseline, compare against it, speedup report"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser. Only ``command``'s module is imported (all of them when None), so
    ``pathgen patch`` does not pay for importing the models, and ``pathgen --help`` is instant."""
    parser = argparse.ArgumentParser(prog="pathgen", description=__doc__.splitlines()[0])
    exit_1_on_usage_error(parser)  # an unknown command or flag is a usage error too
    from pathgen import __version__

    parser.add_argument("--version", action="version", version=f"pathgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is not None and name != command:
            continue
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
        exit_1_on_usage_error(p)
    return parser


# Exit codes, one convention for every subcommand (pathgen bench keeps pytest-benchmark's: 1 a
# regression, 2 an error): 0 done; 1 bad usage or input (nothing, or not everything, could start);
# 2 a batch ran but some items (slides, patients, folds) failed. slide_batch defines them.


# Errors a job raises for bad input (a file that is missing or unreadable, a table without the
# columns it needs, values out of range): their messages name the file and the fix, so the user
# gets that one line, not a traceback. PATHGEN_DEBUG=1 shows the traceback too.
# (KeyError is left out: a bare missing key is a bug far more often than bad input, and its message
# is only the key.)
_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                  IsADirectoryError, PermissionError, FileExistsError)


def _input_error_types() -> tuple[type[BaseException], ...]:
    extra = []
    for mod, name in (("pandas.errors", "EmptyDataError"), ("pandas.errors", "ParserError"),
                      ("pathgen.slides.errors", "SlideError")):
        try:
            extra.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return _INPUT_ERRORS + tuple(extra)


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in msg:
        msg = f"{exc.filename}: {msg}"
    return msg or type(exc).__name__


def _command_of(argv: list[str]) -> str | None:
    for tok in argv:
        if not tok.startswith("-"):
            return tok if tok in COMMANDS else None
    return None


def huge_pages_for_tensors() -> None:
    """Let torch's CPU allocator back large tensors with transparent huge pages (``madvise``).

    The co-attention kernels stream whole bags of patch features; on 4 KiB pages every 4 KiB read
    is a TLB miss. Case B (370,989 keys x 8 heads x 128, 2 threads, alternating processes,
    2026-11-28): faster in 7 of 9 pairs, fp32 257-337 ms against 295-378 ms. torch reads
    ``THP_MEM_ALLOC_ENABLE`` once, at its first allocation, so this runs before torch is imported;
    a value already in the environment (``THP_MEM_ALLOC_ENABLE=0`` opts out) is left alone.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> int:
    huge_pages_for_tensors()
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    parser = build_parser(command) if command else build_parser("")
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 1
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _input_error_types() as exc:
        if os.environ.get("PATHGEN_DEBUG"):
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        print("(set PATHGEN_DEBUG=1 to see the traceback)", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
