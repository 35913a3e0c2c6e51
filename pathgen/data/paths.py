"""Where the project's shared reference data lives.

The real TCGA tables and slides sit in ``../shared/data`` relative to the repository root and are
never copied into the repository. ``shared_data_dir()`` finds that folder from, in order:
the ``PATHGEN_SHARED_DATA`` environment variable, the repository root of this checkout, and the
current working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "PATHGEN_SHARED_DATA"
_RELATIVE = Path("..") / "shared" / "data"

SIGNATURES_RELPATH = Path("mcat") / "datasets_csv_sig" / "signatures.csv"
BLCA_TABLE_RELPATH = Path("mcat") / "datasets_csv_sig" / "tcga_blca_all_clean.csv.zip"
BLCA_CLINICAL_RELPATH = Path("survpath") / "datasets_csv" / "clinical_data" / "tcga_blca_clinical.csv"


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get(ENV_VAR)
    if env:
        out.append(Path(env))
    repo_root = Path(__file__).resolve().parents[2]
    out.append(repo_root / _RELATIVE)
    out.append(Path.cwd() / _RELATIVE)
    return out


def shared_data_dir(required: bool = True) -> Path | None:
    """Return the shared data folder (``../shared/data`` from the repository root).

    Args:
        required: raise when no candidate exists (otherwise return ``None``).

    Raises:
        FileNotFoundError: naming every place looked at and how to point pathgen elsewhere.
    """
    cands = _candidates()
    for c in cands:
        if c.is_dir():
            return c.resolve()
    if not required:
        return None
    tried = ", ".join(str(c) for c in cands)
    raise FileNotFoundError(
        f"shared data folder not found (looked in: {tried}); set {ENV_VAR}=/path/to/shared/data "
        "or pass explicit file paths")


def shared_data_path(relpath: str | os.PathLike, required: bool = True) -> Path | None:
    """Return ``shared_data_dir() / relpath``; raise (or return None) when it does not exist."""
    root = shared_data_dir(required=required)
    if root is None:
        return None
    p = root / relpath
    if not p.exists():
        if required:
            raise FileNotFoundError(f"{p} does not exist; pass the file path explicitly")
        return None
    return p
