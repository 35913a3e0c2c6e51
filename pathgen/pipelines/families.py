"""``pathgen families TABLE``: which signature genes an expression table has, family by family."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from pathgen.data.expression import table_genes
from pathgen.data.families import NoFamilyMatched, match_families, read_signatures


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", type=Path, help="expression table: MCAT-style (<GENE>_rnaseq columns; .csv/.zip) "
                                            "or a genes x samples matrix with Hugo symbols")
    p.add_argument("--signatures", type=Path, default=None,
                   help="signatures CSV, one column per family (default: MCAT's six families)")
    p.add_argument("--json", action="store_true", help="print JSON: {families: [{name, n_signature, n_matched, "
                                                        "missing}]}")


def main(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        signatures = read_signatures(args.signatures)
        try:
            _, report = match_families(signatures, table_genes(args.table), source=args.table.name,
                                       allow_empty=True)
            failed = None
        except NoFamilyMatched as exc:  # the case this command exists to diagnose: report it, then fail
            report, failed = exc.report, exc
    if args.json:
        out = report.to_dict()
        out["warnings"] = [str(w.message) for w in caught]
        print(json.dumps(out, indent=2))
    else:
        for w in caught:
            print(f"warning: {w.message}")
        print(report.format())
    if failed is not None:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0
