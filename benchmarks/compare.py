"""Save a benchmark baseline, compare the working tree against one, or render the speedup table.

    python benchmarks/compare.py save NAME [--bench-size small] [--append] [--from-json RESULTS.json]
    python benchmarks/compare.py BASELINE [CURRENT.json ...]      # = compare BASELINE ...
    python benchmarks/compare.py report [RESULTS.json ...]

The same as ``pathgen bench ...`` (the code is ``pathgen/bench/``); see benchmarks/README.md.
Exit code 1 when a judged ratio regressed beyond the threshold (default 10%) in two measurements.
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    from pathgen.bench.cli import script_main
except ImportError:  # a checkout without pathgen installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pathgen.bench.cli import script_main

if __name__ == "__main__":
    raise SystemExit(script_main())
