"""The ``pathgen`` command: one entry point, one subcommand per job.

Each subcommand lives in a module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
register it in ``COMMANDS`` below (name -> (module, one-line help)).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("pathgen.info", "versions, compiled kernels (CPU/CUDA), threads, GPU and slide backends"),
    "demo": ("pathgen.pipelines.demo", "the main job: run the demo end to end"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pathgen", description=__doc__.splitlines()[0])
    from pathgen import __version__

    parser.add_argument("--version", action="version", version=f"pathgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 1
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
