"""Expression tables: read them into one samples x genes numeric frame keyed by ``case_id``.

Two layouts are accepted:

- **MCAT style** (one row per slide): ``case_id``, ``slide_id``, clinical columns, then
  ``<GENE>_rnaseq`` columns (``_cnv``/``_mut`` columns are ignored). Zips are read with
  ``pandas.read_csv(path, compression="zip")``. Rows of one case must carry identical values.
- **genes x samples matrix** (cBioPortal ``data_mrna_seq_v2_rsem_zscores*.txt``, log-TPM, ...):
  a ``Hugo_Symbol`` (or first) column of gene symbols and one column per sample; an
  ``Entrez_Gene_Id`` column is dropped. TCGA sample barcodes (``TCGA-XX-XXXX-01``) are reduced to
  the 12-character case id, keeping the lowest sample-type code (primary tumour ``01`` before
  normal ``11``).

Validation counts NaNs, non-numeric cells and duplicated ids/genes; see ``read_expression``.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

RNA_SUFFIX = "_rnaseq"
OMIC_SUFFIXES = ("_rnaseq", "_cnv", "_mut")
GENE_COLUMN_NAMES = ("Hugo_Symbol", "hugo_symbol", "gene", "Gene", "symbol", "Symbol", "gene_symbol")
_TCGA_SAMPLE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})-\d{2}")


@dataclass
class ExpressionReport:
    """What reading and validating an expression table found."""

    source: str
    layout: str
    n_samples: int = 0
    n_genes: int = 0
    n_nan: int = 0
    genes_with_nan: list[str] = field(default_factory=list)
    n_non_numeric: int = 0
    duplicated_ids_identical: int = 0
    duplicated_ids_conflicting: list[str] = field(default_factory=list)
    duplicated_genes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.source}: {self.layout} layout, {self.n_samples} samples x {self.n_genes} genes"]
        if self.duplicated_ids_identical:
            lines.append(f"  {self.duplicated_ids_identical} repeated rows of the same case with identical values "
                         "(one row per slide) merged")
        if self.duplicated_ids_conflicting:
            lines.append(f"  {len(self.duplicated_ids_conflicting)} cases with conflicting repeated rows")
        if self.duplicated_genes:
            lines.append(f"  {len(self.duplicated_genes)} repeated gene symbols")
        if self.n_nan:
            lines.append(f"  {self.n_nan} NaN cells in {len(self.genes_with_nan)} genes")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def read_table(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """Read a CSV/TSV (optionally zipped or gzipped) or Parquet file into a frame."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    compression = "zip" if name.endswith(".zip") else "infer"
    stem = name.removesuffix(".zip").removesuffix(".gz")
    sep = "\t" if stem.endswith((".tsv", ".txt")) else ","
    return pd.read_csv(path, compression=compression, sep=kwargs.pop("sep", sep), low_memory=False, **kwargs)


def detect_layout(frame: pd.DataFrame) -> Literal["mcat", "matrix"]:
    """``"mcat"`` when the frame has ``<GENE>_rnaseq`` columns, else ``"matrix"`` (genes x samples)."""
    if any(str(c).endswith(RNA_SUFFIX) for c in frame.columns):
        return "mcat"
    return "matrix"


def _to_numeric(frame: pd.DataFrame, source: str, report: ExpressionReport) -> pd.DataFrame:
    """Coerce every column to float; raise naming the columns that hold text."""
    bad_cols = {}
    out = {}
    for col in frame.columns:
        s = frame[col]
        if pd.api.types.is_numeric_dtype(s):
            out[col] = s.astype(np.float64)
            continue
        num = pd.to_numeric(s, errors="coerce")
        n_bad = int((num.isna() & s.notna()).sum())
        if n_bad:
            bad_cols[col] = n_bad
        out[col] = num.astype(np.float64)
    if bad_cols:
        report.n_non_numeric = sum(bad_cols.values())
        first = ", ".join(f"{c} ({n})" for c, n in list(bad_cols.items())[:8])
        raise ValueError(f"{source}: {report.n_non_numeric} non-numeric cells in {len(bad_cols)} expression "
                         f"columns, e.g. {first}; clean the table or drop those columns")
    return pd.DataFrame(out, index=frame.index)


def _merge_duplicate_rows(frame: pd.DataFrame, source: str, report: ExpressionReport,
                          on_duplicate: str) -> pd.DataFrame:
    """Merge rows sharing an index: identical rows silently (counted), conflicting ones per policy."""
    if not frame.index.has_duplicates:
        return frame
    dup_mask = frame.index.duplicated(keep=False)
    conflicting = []
    n_identical = 0
    for cid, grp in frame[dup_mask].groupby(level=0, sort=False):
        vals = grp.to_numpy()
        same = np.all((vals == vals[0]) | (np.isnan(vals) & np.isnan(vals[0])))
        if same:
            n_identical += len(grp) - 1
        else:
            conflicting.append(str(cid))
    report.duplicated_ids_identical = n_identical
    report.duplicated_ids_conflicting = conflicting
    if conflicting and on_duplicate == "error":
        raise ValueError(f"{source}: {len(conflicting)} cases have several rows with different expression values "
                         f"(e.g. {conflicting[:5]}); pass on_duplicate='first' or 'mean' to choose")
    if conflicting:
        warnings.warn(f"{source}: {len(conflicting)} cases with conflicting repeated rows resolved by "
                      f"{on_duplicate!r} (e.g. {conflicting[:5]})", UserWarning, stacklevel=3)
    if on_duplicate == "mean":
        return frame.groupby(level=0, sort=False).mean()
    return frame[~frame.index.duplicated(keep="first")]


def expression_from_mcat(frame: pd.DataFrame, *, source: str = "table", suffix: str = RNA_SUFFIX,
                         id_column: str = "case_id", on_duplicate: str = "error",
                         report: ExpressionReport | None = None) -> pd.DataFrame:
    """Samples x genes frame from an MCAT-style table (``<GENE>_rnaseq`` columns, one row per slide).

    Gene columns lose the suffix; the index is ``case_id`` (one row per case).
    """
    report = report or ExpressionReport(source, "mcat")
    if id_column not in frame.columns:
        raise ValueError(f"{source}: no {id_column!r} column (columns start {list(frame.columns[:8])}); "
                         f"pass id_column=")
    cols = [c for c in frame.columns if str(c).endswith(suffix)]
    if not cols:
        raise ValueError(f"{source}: no '*{suffix}' columns; pass suffix= or a genes x samples matrix")
    ids = frame[id_column]
    if ids.isna().any():
        raise ValueError(f"{source}: {int(ids.isna().sum())} rows have no {id_column}")
    values = frame[cols].copy()
    values.columns = [str(c)[: -len(suffix)] for c in cols]
    values.index = pd.Index(ids.astype(str).str.strip(), name="case_id")
    values = _to_numeric(values, source, report)
    return _merge_duplicate_rows(values, source, report, on_duplicate)


def expression_from_matrix(frame: pd.DataFrame, *, source: str = "matrix", gene_column: str | None = None,
                           tcga_case_ids: bool = True, on_duplicate: str = "error",
                           report: ExpressionReport | None = None) -> pd.DataFrame:
    """Samples x genes frame from a genes x samples matrix with Hugo symbols.

    Args:
        frame: one row per gene; a symbol column (``Hugo_Symbol`` or ``gene_column``, else the first)
            and one numeric column per sample. ``Entrez_Gene_Id`` is dropped.
        tcga_case_ids: reduce TCGA sample barcodes to 12-character case ids (lowest sample type kept).
    """
    report = report or ExpressionReport(source, "matrix")
    if gene_column is None:
        gene_column = next((c for c in GENE_COLUMN_NAMES if c in frame.columns), frame.columns[0])
    if gene_column not in frame.columns:
        raise ValueError(f"{source}: no gene column {gene_column!r}")
    frame = frame.drop(columns=[c for c in ("Entrez_Gene_Id", "entrez_id") if c in frame.columns])
    genes = frame[gene_column]
    no_symbol = int(genes.isna().sum())
    if no_symbol:
        report.notes.append(f"{no_symbol} rows without a gene symbol dropped")
        frame = frame[genes.notna()]
    values = frame.drop(columns=[gene_column])
    values.index = pd.Index(frame[gene_column].astype(str).str.strip(), name="gene")
    values = _to_numeric(values, source, report)
    dup_genes = sorted(set(values.index[values.index.duplicated()]))
    if dup_genes:
        report.duplicated_genes = dup_genes
        warnings.warn(f"{source}: {len(dup_genes)} gene symbols appear on several rows (e.g. {dup_genes[:5]}); "
                      "their rows were averaged", UserWarning, stacklevel=2)
        values = values.groupby(level=0, sort=False).mean()
    samples = values.T
    samples.index = pd.Index([str(s).strip() for s in samples.index], name="case_id")
    if tcga_case_ids and all(_TCGA_SAMPLE.match(s) for s in samples.index):
        order = sorted(samples.index)
        samples = samples.loc[order]
        cases = [_TCGA_SAMPLE.match(s).group(1) for s in samples.index]
        n_extra = len(cases) - len(set(cases))
        if n_extra:
            report.notes.append(f"{n_extra} extra samples of a case dropped (lowest TCGA sample-type code kept)")
        samples.index = pd.Index(cases, name="case_id")
        samples = samples[~samples.index.duplicated(keep="first")]
    else:
        samples = _merge_duplicate_rows(samples, source, report, on_duplicate)
    samples.columns.name = None
    return samples


def validate_expression(values: pd.DataFrame, report: ExpressionReport, *, on_nan: str = "drop_genes",
                        source: str = "table") -> pd.DataFrame:
    """Apply the NaN policy and fill in the report's counts.

    Args:
        on_nan: ``"drop_genes"`` (drop genes with any NaN, warn with counts), ``"error"``, or ``"keep"``.
    """
    nan_counts = values.isna().sum()
    report.n_nan = int(nan_counts.sum())
    report.genes_with_nan = [str(g) for g in nan_counts.index[nan_counts > 0]]
    if report.n_nan:
        msg = (f"{source}: {report.n_nan} NaN values in {len(report.genes_with_nan)} genes "
               f"(e.g. {report.genes_with_nan[:5]})")
        if on_nan == "error":
            raise ValueError(msg + "; impute them or pass on_nan='drop_genes'")
        if on_nan == "drop_genes":
            warnings.warn(msg + "; those genes were dropped", UserWarning, stacklevel=3)
            values = values.loc[:, nan_counts == 0]
        elif on_nan != "keep":
            raise ValueError(f"on_nan must be 'drop_genes', 'error' or 'keep', not {on_nan!r}")
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"{source}: no samples or no genes left ({values.shape[0]} x {values.shape[1]})")
    report.n_samples, report.n_genes = values.shape
    return values


def read_expression(source: str | os.PathLike | pd.DataFrame, *, layout: str = "auto", suffix: str = RNA_SUFFIX,
                    id_column: str = "case_id", gene_column: str | None = None, on_nan: str = "drop_genes",
                    on_duplicate: str = "error", return_report: bool = False):
    """Read an expression table into a samples x genes float64 frame indexed by ``case_id``.

    Args:
        source: a file (CSV/TSV/zip/gz/Parquet) or an already loaded frame.
        layout: ``"auto"`` (``_rnaseq`` columns -> MCAT, else genes x samples), ``"mcat"`` or ``"matrix"``.
        suffix: the MCAT gene-column suffix.
        id_column: the MCAT case-id column.
        gene_column: the matrix's symbol column (default ``Hugo_Symbol`` or the first column).
        on_nan: ``"drop_genes"`` (warn), ``"error"`` or ``"keep"``.
        on_duplicate: repeated cases with *different* values: ``"error"``, ``"first"`` or ``"mean"``
            (identical repeats, e.g. one row per slide, are always merged).
        return_report: also return the ``ExpressionReport``.

    Returns:
        The frame (columns = bare gene symbols), or ``(frame, report)``.

    Raises:
        ValueError: non-numeric cells, conflicting duplicates, NaNs under ``on_nan="error"``, no genes.
    """
    name = str(source) if not isinstance(source, pd.DataFrame) else "frame"
    frame = source if isinstance(source, pd.DataFrame) else read_table(source)
    if layout == "auto":
        layout = detect_layout(frame)
    report = ExpressionReport(name, layout)
    if layout == "mcat":
        values = expression_from_mcat(frame, source=name, suffix=suffix, id_column=id_column,
                                      on_duplicate=on_duplicate, report=report)
    elif layout == "matrix":
        values = expression_from_matrix(frame, source=name, gene_column=gene_column, on_duplicate=on_duplicate,
                                        report=report)
    else:
        raise ValueError(f"layout must be 'auto', 'mcat' or 'matrix', not {layout!r}")
    values = validate_expression(values, report, on_nan=on_nan, source=name)
    return (values, report) if return_report else values


def table_genes(source: str | os.PathLike | pd.DataFrame, suffix: str = RNA_SUFFIX) -> list[str]:
    """Gene symbols of a table without the full validation (MCAT columns or matrix symbols)."""
    frame = source if isinstance(source, pd.DataFrame) else read_table(source)
    if detect_layout(frame) == "mcat":
        return [str(c)[: -len(suffix)] for c in frame.columns if str(c).endswith(suffix)]
    gene_column = next((c for c in GENE_COLUMN_NAMES if c in frame.columns), frame.columns[0])
    return [str(g).strip() for g in frame[gene_column].dropna()]


def to_mcat_columns(values: pd.DataFrame, suffix: str = RNA_SUFFIX) -> pd.DataFrame:
    """Samples x genes frame -> ``case_id`` column + ``<GENE>_rnaseq`` columns (MCAT layout)."""
    out = values.copy()
    out.columns = [f"{g}{suffix}" for g in out.columns]
    out.index.name = "case_id"
    return out.reset_index()
