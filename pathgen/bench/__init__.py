"""Performance-regression tooling for the ``benchmarks/`` suite (``pathgen bench``).

Benchmarks store noise-proof figures in pytest-benchmark's ``extra_info``: ratios to references
timed in the same process (keys ``speedup_vs_<reference>``) and the fraction of the same-run
bandwidth floor (``pct_of_floor``). These machines swing 2.5-3.7x in absolute speed between runs,
so regressions are judged on those figures only; milliseconds are kept for information.

- :mod:`pathgen.bench.results`: read pytest-benchmark JSON or a saved baseline into one shape;
  build baselines.
- :mod:`pathgen.bench.compare`: verdicts (a regression must show in two measurements).
- :mod:`pathgen.bench.report`: Markdown table + bar chart for people.
- :mod:`pathgen.bench.cli`: ``pathgen bench save|compare|report|run`` (also ``benchmarks/compare.py``).
"""
from pathgen.bench.compare import Comparison, Row, compare_runs, format_table
from pathgen.bench.results import (BenchResult, Results, is_judged, load_results, make_baseline,
                                   merge_results)

__all__ = ["BenchResult", "Results", "is_judged", "load_results", "make_baseline", "merge_results",
           "Comparison", "Row", "compare_runs", "format_table"]
