"""Gene families: the ordered groups of genes the generator synthesizes and the predictor reads.

A signatures CSV has one column per family (header = family name) and gene symbols down each
column, NaN-padded (MCAT's ``signatures.csv``: six families). Symbols are matched **exactly**
against the genes of an expression table (never by prefix: ``APC`` must not pull ``APC2``).
A symbol listed twice in one family counts once, with a warning. A gene may belong to several
families; it then appears once in each family's slice of the concatenated expression vector.

``GeneFamilies`` fixes the family order and the gene order inside each family. Its
``to_dict()`` travels with every model and output file, so sizes are never hard-coded.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from pathgen.data.paths import SIGNATURES_RELPATH, shared_data_path

MCAT_FAMILIES = (
    "Tumor Suppressor Genes",
    "Oncogenes",
    "Protein Kinases",
    "Cell Differentiation Markers",
    "Transcription Factors",
    "Cytokines and Growth Factors",
)


def default_signatures_path() -> Path:
    """The MCAT six-family ``signatures.csv`` in the shared data folder."""
    return shared_data_path(SIGNATURES_RELPATH)


def read_signatures(path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Read a signatures CSV into ``{family: [symbols]}`` in file order.

    Symbols are stripped of surrounding whitespace; empty cells are skipped; a symbol repeated
    inside one family is kept once (first position) and reported in a ``UserWarning``.

    Args:
        path: the CSV (one column per family); default: MCAT's ``signatures.csv``.

    Raises:
        ValueError: the file has no columns, duplicated family headers or an empty family.
    """
    path = Path(path) if path is not None else default_signatures_path()
    frame = pd.read_csv(path, dtype=str, keep_default_na=True)
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed:")]]
    if frame.shape[1] == 0:
        raise ValueError(f"{path}: no family columns; a signatures CSV has one column per family")
    names = [str(c).strip() for c in frame.columns]
    dup_names = sorted({n for n in names if names.count(n) > 1})
    if dup_names:
        raise ValueError(f"{path}: family headers repeated: {dup_names}; give each family one column")
    families: dict[str, list[str]] = {}
    repeated: dict[str, list[str]] = {}
    for col, name in zip(frame.columns, names):
        seen: dict[str, None] = {}
        for raw in frame[col].dropna():
            sym = raw.strip()
            if not sym:
                continue
            if sym in seen:
                repeated.setdefault(name, []).append(sym)
            else:
                seen[sym] = None
        if not seen:
            raise ValueError(f"{path}: family {name!r} lists no genes")
        families[name] = list(seen)
    if repeated:
        detail = "; ".join(f"{k}: {len(v)} ({', '.join(sorted(set(v))[:8])})" for k, v in repeated.items())
        warnings.warn(f"{path}: symbols listed more than once in a family were counted once: {detail}",
                      UserWarning, stacklevel=2)
    return families


@dataclass(frozen=True)
class GeneFamilies:
    """Ordered gene families.

    Attributes:
        names: family names in order.
        genes: per family, the gene symbols in order (matched genes only).
    """

    names: tuple[str, ...]
    genes: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.genes):
            raise ValueError(f"GeneFamilies: {len(self.names)} names but {len(self.genes)} gene lists")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"GeneFamilies: repeated family names {list(self.names)}")
        for n, g in zip(self.names, self.genes):
            if len(g) == 0:
                raise ValueError(f"GeneFamilies: family {n!r} has no genes")
            if len(set(g)) != len(g):
                raise ValueError(f"GeneFamilies: family {n!r} repeats genes")

    @classmethod
    def from_mapping(cls, families: Mapping[str, Sequence[str]]) -> "GeneFamilies":
        return cls(tuple(families), tuple(tuple(g) for g in families.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Genes per family, in family order (the ``omic_sizes`` of MCAT/PathGen)."""
        return tuple(len(g) for g in self.genes)

    @property
    def total(self) -> int:
        """Length of the concatenated expression vector (a gene in two families counts twice)."""
        return sum(self.sizes)

    @property
    def columns(self) -> list[str]:
        """Gene symbols of the concatenated vector, family after family."""
        return [g for fam in self.genes for g in fam]

    @property
    def slices(self) -> dict[str, slice]:
        """``{family: slice}`` into the concatenated vector."""
        out, start = {}, 0
        for n, size in zip(self.names, self.sizes):
            out[n] = slice(start, start + size)
            start += size
        return out

    @property
    def unique_genes(self) -> list[str]:
        """Every gene once, in first-appearance order."""
        return list(dict.fromkeys(self.columns))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self.genes[self.names.index(name)]

    def to_dict(self) -> dict:
        """JSON-serialisable form: ``{"names", "genes", "sizes"}`` (sizes are redundant, for readers)."""
        return {"names": list(self.names), "genes": [list(g) for g in self.genes], "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GeneFamilies":
        fam = cls(tuple(d["names"]), tuple(tuple(g) for g in d["genes"]))
        if "sizes" in d and list(d["sizes"]) != list(fam.sizes):
            raise ValueError(f"GeneFamilies.from_dict: sizes {list(d['sizes'])} do not match the gene lists "
                             f"{list(fam.sizes)}; the file was edited inconsistently")
        return fam


@dataclass
class FamilyMatch:
    """How one family's signature matched a table."""

    name: str
    n_signature: int
    n_matched: int
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "n_signature": self.n_signature, "n_matched": self.n_matched,
                "missing": list(self.missing)}


@dataclass
class FamilyMatchReport:
    """Per-family matched and missing genes (``families`` in family order)."""

    families: list[FamilyMatch]
    source: str = ""

    def to_dict(self) -> dict:
        return {"source": self.source, "families": [f.to_dict() for f in self.families]}

    def format(self, max_missing: int = 10) -> str:
        lines = [f"gene families matched against {self.source or 'the table'} (exact symbols):",
                 f"  {'family':<32}{'signature':>10}{'matched':>9}{'missing':>9}"]
        for f in self.families:
            lines.append(f"  {f.name:<32}{f.n_signature:>10}{f.n_matched:>9}{len(f.missing):>9}")
        tot_sig = sum(f.n_signature for f in self.families)
        tot_match = sum(f.n_matched for f in self.families)
        lines.append(f"  {'total':<32}{tot_sig:>10}{tot_match:>9}{tot_sig - tot_match:>9}")
        for f in self.families:
            if f.missing:
                more = f" ... (+{len(f.missing) - max_missing})" if len(f.missing) > max_missing else ""
                lines.append(f"  missing in {f.name}: {', '.join(f.missing[:max_missing])}{more}")
        return "\n".join(lines)


def match_families(signatures: Mapping[str, Sequence[str]], available: Iterable[str], *,
                   source: str = "", allow_empty: bool = False) -> tuple[GeneFamilies, FamilyMatchReport]:
    """Match each family's symbols exactly against the genes available in a table.

    Args:
        signatures: ``{family: symbols}`` (e.g. from ``read_signatures``), order kept.
        available: gene symbols of the expression table (no ``_rnaseq`` suffix).
        source: a name for the table, used in messages and the report.
        allow_empty: drop families with no matched gene (with a warning) instead of raising.

    Returns:
        ``(families, report)``: matched genes in signature order, and the per-family report.

    Raises:
        ValueError: a family matched no gene (unless ``allow_empty``), naming the family.
    """
    avail = set(available)
    kept: dict[str, list[str]] = {}
    rows = []
    for name, symbols in signatures.items():
        symbols = list(dict.fromkeys(symbols))
        matched = [s for s in symbols if s in avail]
        missing = [s for s in symbols if s not in avail]
        rows.append(FamilyMatch(name, len(symbols), len(matched), missing))
        if matched:
            kept[name] = matched
        elif allow_empty:
            warnings.warn(f"{source or 'table'}: family {name!r} matched no gene and was dropped", UserWarning,
                          stacklevel=2)
        else:
            raise ValueError(f"{source or 'table'}: family {name!r} matched none of its {len(symbols)} genes; "
                             "check that the table uses Hugo symbols (e.g. TP53, with '_rnaseq' suffixes for "
                             "MCAT tables) or pass allow_empty=True")
    if not kept:
        raise NoFamilyMatched(f"{source or 'table'}: no family matched any gene; check that the table uses Hugo "
                              "symbols (e.g. TP53, with '_rnaseq' suffixes for MCAT tables) and that the signatures "
                              "are the ones meant", FamilyMatchReport(rows, source))
    return GeneFamilies.from_mapping(kept), FamilyMatchReport(rows, source)


class NoFamilyMatched(ValueError):
    """No signature gene is in the table; ``report`` still says, family by family, what was looked for."""

    def __init__(self, message: str, report: "FamilyMatchReport"):
        super().__init__(message)
        self.report = report


def load_gene_families(genes: Iterable[str], signatures: str | os.PathLike | None = None, *,
                       source: str = "", allow_empty: bool = False) -> tuple[GeneFamilies, FamilyMatchReport]:
    """``read_signatures`` + ``match_families`` in one call (default: MCAT's six families)."""
    return match_families(read_signatures(signatures), genes, source=source, allow_empty=allow_empty)
