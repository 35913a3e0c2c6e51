"""Cohort manifest: one row per slide, the labels of its patient, and where its pixels or features are.

Canonical columns (``Manifest.frame``):

=================  ==========================================================================
``case_id``        patient id (several slides may share one; metrics are per patient)
``slide_id``       slide id without a slide-file extension (``.svs``, ``.tif``, ... stripped)
``slide_path``     optional: slide file (relative paths resolve against ``Manifest.root``)
``features_path``  optional: ``.h5`` with ``features`` [N, D] and ``coords`` [N, 2]
``survival_months``  follow-up in months (days-based columns are converted explicitly)
``censorship``     1 = censored (event NOT observed), 0 = event (MCAT convention)
``grade``          ordered categorical (G1 < G2 < ..., II < III < IV, Low < High)
``age``, ``is_female``, ``race``  demographics when present
=================  ==========================================================================

Reading maps other spellings explicitly and records each mapping in ``Manifest.mapping``:
``os_survival_days``/``os_censorship`` (and ``dss_``/``pfi_``, SurvPath's ``survival_months_dss``),
``sex``/``gender`` -> ``is_female``, ``histological_grade`` -> ``grade``, ``age_at_initial_pathologic_diagnosis``
-> ``age``. MCAT's ``slide_id`` keeps the ``.svs``; it is stripped with the known extensions only
(never ``rstrip``, never a bare ``splitext``: TCGA slide ids contain dots).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pathgen.data.expression import read_table
from pathgen.data.survival import check_survival, days_to_months

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                    ".dcm", ".czi", ".qptiff", ".h5", ".pt", ".jpg", ".png")
MISSING_TOKENS = {"", "nan", "na", "n/a", "none", "unknown", "[unknown]", "[not available]", "[not evaluated]",
                  "[not applicable]", "[discrepancy]", "gx", "not reported"}
ENDPOINTS = {
    # endpoint: list of (time column, censorship column, unit) tried in order
    "os": [("survival_months", "censorship", "months"), ("os_survival_months", "os_censorship", "months"),
           ("os_survival_days", "os_censorship", "days")],
    "dss": [("survival_months_dss", "censorship_dss", "months"), ("dss_survival_days", "dss_censorship", "days")],
    "pfi": [("survival_months_pfi", "censorship_pfi", "months"), ("pfi_survival_days", "pfi_censorship", "days")],
}
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5}


def strip_slide_extension(slide_id: str) -> str:
    """``TCGA-..-DX1.<UUID>.svs`` -> ``TCGA-..-DX1.<UUID>``; only known slide extensions are removed."""
    s = str(slide_id).strip()
    low = s.lower()
    for ext in SLIDE_EXTENSIONS:
        if low.endswith(ext):
            return s[: -len(ext)]
    return s


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip().lower() in MISSING_TOKENS


def parse_grade(values: Iterable, order: Sequence[str] | None = None, *, source: str = "grade") -> pd.Categorical:
    """Normalise grades to an ordered categorical.

    ``"G2"``/``"g2"``/``"Grade 2"`` -> ``G2``; ``"WHO III"``/``"Grade III"``/``"III"`` -> ``III``;
    ``2``/``"2"`` -> ``2``; ``"Low Grade"`` -> ``Low``, ``"High Grade"`` -> ``High``; ``GX`` and the TCGA
    ``[Not Available]`` tokens -> missing.

    Args:
        values: raw grade values.
        order: explicit category order (lowest first); default: the observed categories sorted by rank.

    Raises:
        ValueError: unparseable values, values outside ``order``, or mixed notations.
    """
    norm, kinds, bad = [], set(), []
    for v in values:
        if _missing(v):
            norm.append(None)
            continue
        s = str(v).strip()
        if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
            s = str(int(float(v)))
        u = re.sub(r"^(who|grade|who grade)\s*", "", s, flags=re.I).strip()
        m = re.fullmatch(r"[Gg]\s*(\d)", u)
        if m or re.fullmatch(r"(?i)grade\s*\d", s):
            norm.append(f"G{m.group(1) if m else s[-1]}")
            kinds.add("G")
        elif u.upper() in _ROMAN:
            norm.append(u.upper())
            kinds.add("roman")
        elif re.fullmatch(r"\d", u):
            norm.append(u)
            kinds.add("int")
        elif re.fullmatch(r"(?i)(low|high)(\s*grade)?", u):
            norm.append(u.split()[0].capitalize())
            kinds.add("lowhigh")
        elif order is not None and s in order:
            norm.append(s)
            kinds.add("custom")
        else:
            bad.append(s)
            norm.append(None)
    if bad:
        raise ValueError(f"{source}: {len(bad)} grade values not understood (e.g. {sorted(set(bad))[:5]}); "
                         "use G1-G4, WHO II-IV, integers or Low/High, or pass grade_order=")
    present = [x for x in dict.fromkeys(norm) if x is not None]
    if order is None:
        if len(kinds) > 1:
            raise ValueError(f"{source}: mixed grade notations {sorted(kinds)} (values {present[:8]}); "
                             "pass grade_order= to define one order")

        def rank(x: str):
            if x in ("Low", "High"):
                return 0 if x == "Low" else 1
            if x in _ROMAN:
                return _ROMAN[x]
            return int(x.lstrip("G"))

        order = sorted(present, key=rank)
    outside = sorted({x for x in present if x not in order})
    if outside:
        raise ValueError(f"{source}: grades {outside} not in grade_order {list(order)}")
    return pd.Categorical(norm, categories=list(order), ordered=True)


def parse_is_female(values: Iterable, *, source: str = "sex") -> pd.Series:
    """``F``/``female``/1/True -> 1.0, ``M``/``male``/0/False -> 0.0, missing -> NaN."""
    out = []
    for v in values:
        if _missing(v):
            out.append(np.nan)
            continue
        s = str(v).strip().lower()
        if s in ("f", "female", "1", "1.0", "true", "woman"):
            out.append(1.0)
        elif s in ("m", "male", "0", "0.0", "false", "man"):
            out.append(0.0)
        else:
            raise ValueError(f"{source}: sex value {v!r} not understood; use F/M, female/male or is_female 0/1")
    return pd.Series(out, dtype=np.float64)


@dataclass
class Manifest:
    """A validated cohort manifest.

    Attributes:
        frame: one row per slide with the canonical columns (see module docstring).
        root: folder that relative ``slide_path``/``features_path`` entries resolve against.
        mapping: ``{canonical column: what it was made from}``.
        warnings: validation messages that did not stop reading.
    """

    frame: pd.DataFrame
    root: Path = field(default_factory=Path.cwd)
    mapping: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        """Patients in first-appearance order."""
        return list(dict.fromkeys(self.frame["case_id"]))

    @property
    def grade_categories(self) -> list[str]:
        g = self.frame.get("grade")
        return list(g.cat.categories) if g is not None and hasattr(g, "cat") else []

    def cases(self) -> pd.DataFrame:
        """One row per patient (labels and demographics), indexed by ``case_id``; ``n_slides`` added."""
        cols = [c for c in ("survival_months", "censorship", "grade", "age", "is_female", "race")
                if c in self.frame.columns]
        grouped = self.frame.groupby("case_id", sort=False)
        out = grouped[cols].first() if cols else pd.DataFrame(index=pd.Index(self.case_ids, name="case_id"))
        out["n_slides"] = grouped.size()
        if "grade" in out.columns and "grade" in self.frame.columns:
            out["grade"] = pd.Categorical(out["grade"], categories=self.grade_categories, ordered=True)
        return out

    def slides_of(self, case_id: str) -> pd.DataFrame:
        """The slide rows of one patient."""
        return self.frame[self.frame["case_id"] == case_id]

    def resolve(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def features_paths(self, features_dir: str | os.PathLike | None = None) -> dict[str, list[Path]]:
        """``{case_id: [feature .h5 per slide]}`` for slides whose feature file exists.

        ``features_path`` entries win; otherwise ``features_dir/<slide_id>.h5`` (pathgen embed's layout,
        also ``features_dir/h5_files/<slide_id>.h5``, CLAM's).
        """
        out: dict[str, list[Path]] = {c: [] for c in self.case_ids}
        for _, row in self.frame.iterrows():
            cand = []
            fp = row.get("features_path")
            if isinstance(fp, str) and fp:
                cand.append(self.resolve(fp))
            if features_dir is not None:
                d = Path(features_dir)
                cand += [d / f"{row['slide_id']}.h5", d / "h5_files" / f"{row['slide_id']}.h5"]
            hit = next((p for p in cand if p.exists()), None)
            if hit is not None:
                out[row["case_id"]].append(hit)
        return out


def _pick_survival(frame: pd.DataFrame, endpoint: str, time_column: str | None, censorship_column: str | None,
                   time_unit: str | None, event_column: str | None, source: str):
    """Return (months, censorship, description) or (None, None, None) if no survival columns."""
    if time_column is not None:
        if time_column not in frame.columns:
            raise ValueError(f"{source}: time column {time_column!r} not found")
        unit = time_unit or ("days" if "day" in time_column.lower() else "months")
        ccol = censorship_column
        if ccol is None and event_column is None:
            raise ValueError(f"{source}: give censorship_column= (1 = censored) or event_column= (1 = event) "
                             f"for {time_column!r}")
        chosen = (time_column, ccol, unit)
    else:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {sorted(ENDPOINTS)}, not {endpoint!r}")
        chosen = next(((t, c, u) for t, c, u in ENDPOINTS[endpoint] if t in frame.columns and c in frame.columns),
                      None)
        if chosen is None:
            return None, None, None
    tcol, ccol, unit = chosen
    times = pd.to_numeric(frame[tcol], errors="coerce").to_numpy(np.float64)
    if unit == "days":
        times = days_to_months(times)
    elif unit != "months":
        raise ValueError(f"time_unit must be 'days' or 'months', not {unit!r}")
    if event_column is not None:
        cens = 1.0 - pd.to_numeric(frame[event_column], errors="coerce").to_numpy(np.float64)
        desc = f"{tcol} ({unit}) / 1 - {event_column}"
    else:
        cens = pd.to_numeric(frame[ccol], errors="coerce").to_numpy(np.float64)
        desc = f"{tcol} ({unit}) / {ccol}"
    return times, cens, desc


def read_manifest(source: str | os.PathLike | pd.DataFrame, *, root: str | os.PathLike | None = None,
                  endpoint: str = "os", time_column: str | None = None, censorship_column: str | None = None,
                  event_column: str | None = None, time_unit: str | None = None, grade_column: str | None = None,
                  grade_order: Sequence[str] | None = None, grade_table: pd.DataFrame | None = None,
                  require_survival: bool = True, check_censoring: bool = True) -> Manifest:
    """Read and validate a cohort manifest (MCAT/PORPOISE/SurvPath tables work unchanged).

    Args:
        source: CSV/zip/Parquet file or a frame; one row per slide.
        root: folder for relative paths (default: the manifest's folder).
        endpoint: ``"os"``, ``"dss"`` or ``"pfi"``: which survival columns to look for.
        time_column / censorship_column / event_column / time_unit: explicit survival mapping
            (``event_column`` is 1 = event and is converted to censorship = 1 - event).
        grade_column: grade column (default: ``grade``, else ``histological_grade``).
        grade_order: explicit grade order, lowest first.
        grade_table: optional ``case_id`` + grade table merged in (e.g. SurvPath clinical CSV).
        require_survival: raise when no survival columns are found.
        check_censoring: run ``check_survival`` (refuses inverted coding, negative times).

    Raises:
        ValueError: missing ids, duplicated slide ids, bad survival labels, unparseable grades,
            a patient whose slides disagree on its labels.
    """
    name = str(source) if not isinstance(source, pd.DataFrame) else "manifest"
    raw = source if isinstance(source, pd.DataFrame) else read_table(source)
    raw = raw.loc[:, [c for c in raw.columns if not str(c).startswith("Unnamed:")]]
    if root is None:
        root = Path(source).parent if not isinstance(source, pd.DataFrame) else Path.cwd()
    mapping: dict[str, str] = {}
    notes: list[str] = []
    if "case_id" not in raw.columns:
        alt = next((c for c in ("patient_id", "submitter_id", "TCGA ID", "id") if c in raw.columns), None)
        if alt is None:
            raise ValueError(f"{name}: no 'case_id' column (columns: {list(raw.columns[:10])})")
        raw = raw.rename(columns={alt: "case_id"})
        mapping["case_id"] = alt
    out = pd.DataFrame({"case_id": raw["case_id"].astype("string").str.strip()})
    n_no_case = int(out["case_id"].isna().sum())
    if n_no_case:
        raise ValueError(f"{name}: {n_no_case} rows without case_id")
    if "slide_id" in raw.columns:
        n_no_slide = int(raw["slide_id"].isna().sum())
        if n_no_slide:
            raise ValueError(f"{name}: {n_no_slide} rows without slide_id")
        out["slide_id"] = [strip_slide_extension(s) for s in raw["slide_id"]]
    else:
        out["slide_id"] = out["case_id"]
        mapping["slide_id"] = "case_id (no slide_id column: one slide or features file per case)"
    dup = out["slide_id"][out["slide_id"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{name}: {len(dup)} slide ids listed more than once (e.g. {dup[:5]}); one row per slide")
    for col in ("slide_path", "features_path"):
        if col in raw.columns:
            out[col] = raw[col].where(raw[col].notna(), None)

    times, cens, desc = _pick_survival(raw, endpoint, time_column, censorship_column, time_unit, event_column, name)
    if times is None:
        if require_survival:
            raise ValueError(f"{name}: no survival columns for endpoint {endpoint!r} (looked for "
                             f"{[t for t, _, _ in ENDPOINTS.get(endpoint, [])]}); pass time_column= and "
                             "censorship_column=, or require_survival=False")
    else:
        out["survival_months"] = times
        out["censorship"] = cens
        mapping["survival_months"] = desc

    gcol = grade_column or next((c for c in ("grade", "histological_grade", "Grade") if c in raw.columns), None)
    grade_src = raw
    if grade_table is not None:
        gt = grade_table.loc[:, [c for c in grade_table.columns if not str(c).startswith("Unnamed:")]]
        gcol = grade_column or next((c for c in ("grade", "histological_grade", "Grade") if c in gt.columns), None)
        if gcol is None or gcol not in gt.columns or "case_id" not in gt.columns:
            raise ValueError(f"{name}: grade_table needs 'case_id' and a grade column (grade, histological_grade "
                             f"or Grade); it has {list(gt.columns[:8])}")
        gmap = gt.drop_duplicates("case_id").set_index("case_id")[gcol]
        grade_src = pd.DataFrame({gcol: out["case_id"].map(gmap).to_numpy()})
        mapping["grade"] = f"{gcol} from grade_table"
    if gcol is not None and gcol in grade_src.columns:
        out["grade"] = parse_grade(grade_src[gcol].tolist(), grade_order, source=f"{name}: {gcol}")
        mapping.setdefault("grade", gcol)
        n_missing = int(out["grade"].isna().sum())
        if n_missing:
            notes.append(f"{n_missing} slides have no grade")

    age_col = next((c for c in ("age", "age_at_initial_pathologic_diagnosis", "age_at_diagnosis")
                    if c in raw.columns), None)
    if age_col:
        out["age"] = pd.to_numeric(raw[age_col], errors="coerce").to_numpy(np.float64)
        if age_col != "age":
            mapping["age"] = age_col
    sex_col = next((c for c in ("is_female", "sex", "gender") if c in raw.columns), None)
    if sex_col:
        out["is_female"] = parse_is_female(raw[sex_col], source=f"{name}: {sex_col}").to_numpy()
        if sex_col != "is_female":
            mapping["is_female"] = sex_col
    if "race" in raw.columns:
        out["race"] = [None if _missing(v) else str(v).strip() for v in raw["race"]]

    manifest = Manifest(out.reset_index(drop=True), Path(root), mapping, notes)
    _check_case_consistency(manifest, name)
    if check_censoring and "survival_months" in out.columns:
        cases = manifest.cases()
        check_survival(cases["survival_months"], cases["censorship"], source=name)
    for msg in notes:
        warnings.warn(f"{name}: {msg}", UserWarning, stacklevel=2)
    return manifest


def _check_case_consistency(manifest: Manifest, name: str) -> None:
    """All slides of a patient must carry the same patient labels."""
    cols = [c for c in ("survival_months", "censorship", "grade") if c in manifest.frame.columns]
    if not cols:
        return
    f = manifest.frame[["case_id", *cols]].copy()
    if "grade" in cols:
        f["grade"] = f["grade"].astype(str)
    n_distinct = f.groupby("case_id")[cols].nunique(dropna=False)
    bad = n_distinct[(n_distinct > 1).any(axis=1)].index.tolist()
    if bad:
        raise ValueError(f"{name}: {len(bad)} patients have slides with different survival or grade labels "
                         f"(e.g. {bad[:5]}); patient labels must agree across slides")


@dataclass
class CohortCheck:
    """Which patients have slides, expression, or both."""

    cases_with_both: list[str]
    slides_without_expression: list[str]
    expression_without_slides: list[str]

    def format(self) -> str:
        lines = [f"{len(self.cases_with_both)} patients have slides and expression"]
        if self.slides_without_expression:
            lines.append(f"{len(self.slides_without_expression)} patients have slides but no expression: "
                         f"{', '.join(self.slides_without_expression[:10])}"
                         + (" ..." if len(self.slides_without_expression) > 10 else ""))
        if self.expression_without_slides:
            lines.append(f"{len(self.expression_without_slides)} patients have expression but no slide: "
                         f"{', '.join(self.expression_without_slides[:10])}"
                         + (" ..." if len(self.expression_without_slides) > 10 else ""))
        return "\n".join(lines)


def check_cohort(manifest: Manifest, expression: pd.DataFrame, *, strict: bool = False) -> CohortCheck:
    """List patients with slides but no expression and vice versa (never dropped silently).

    Args:
        manifest: the slides.
        expression: samples x genes frame indexed by ``case_id``.
        strict: raise instead of warning when either list is non-empty.
    """
    slide_cases = manifest.case_ids
    expr_cases = set(map(str, expression.index))
    both = [c for c in slide_cases if c in expr_cases]
    no_expr = [c for c in slide_cases if c not in expr_cases]
    no_slides = [c for c in expression.index.astype(str) if c not in set(slide_cases)]
    check = CohortCheck(both, no_expr, no_slides)
    if no_expr or no_slides:
        msg = check.format()
        if strict:
            raise ValueError(f"manifest and expression disagree:\n{msg}")
        warnings.warn(msg, UserWarning, stacklevel=2)
    return check
