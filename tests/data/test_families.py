"""Gene families: exact matching, duplicates counted once, order and sizes that travel."""
from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from pathgen.data import GeneFamilies, MCAT_FAMILIES, match_families, read_signatures
from tests.data.conftest import BLCA, SIGNATURES


def _independent_counts(shared_data) -> dict[str, int]:
    """Exact-match count with the csv module only: unique symbols per family whose
    ``<symbol>_rnaseq`` column exists in the BLCA table header."""
    with open(shared_data / SIGNATURES, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    with zipfile.ZipFile(shared_data / BLCA) as zf:
        with zf.open(zf.namelist()[0]) as fh:
            cols = next(csv.reader(io.TextIOWrapper(fh, "utf-8")))
    rna = {c for c in cols if c.endswith("_rnaseq")}
    out = {}
    for j, fam in enumerate(header):
        symbols = {r[j].strip() for r in body if j < len(r) and r[j].strip()}
        out[fam] = sum(f"{s}_rnaseq" in rna for s in symbols)
    return out


def test_blca_family_sizes_equal_independent_exact_count(blca_families, shared_data):
    families, report = blca_families
    expected = _independent_counts(shared_data)
    assert families.names == MCAT_FAMILIES
    assert dict(zip(families.names, families.sizes)) == expected
    assert [f.n_matched for f in report.families] == list(families.sizes)


def test_exact_not_prefix_matching():
    sig = {"Tumor Suppressor Genes": ["APC", "TP53", "AR"]}
    fam, report = match_families(sig, ["APC2", "APCDD1", "TP53", "ARX", "AR"])
    assert fam["Tumor Suppressor Genes"] == ("TP53", "AR")
    assert report.families[0].missing == ["APC"]
    assert report.families[0].n_signature == 3


def test_repeated_symbols_counted_once_with_warning(shared_data):
    with pytest.warns(UserWarning, match="Cell Differentiation Markers: 9"):
        sig = read_signatures(shared_data / SIGNATURES)
    assert len(sig["Cell Differentiation Markers"]) == 443  # 452 listed, 9 repeats
    assert len(sig["Transcription Factors"]) == 1536
    assert all(len(set(v)) == len(v) for v in sig.values())


def test_gene_families_roundtrip_and_slices():
    fam = GeneFamilies.from_mapping({"A": ["G1", "G2"], "B": ["G2", "G3", "G4"]})
    assert fam.sizes == (2, 3) and fam.total == 5
    assert fam.columns == ["G1", "G2", "G2", "G3", "G4"]
    assert fam.slices == {"A": slice(0, 2), "B": slice(2, 5)}
    assert fam.unique_genes == ["G1", "G2", "G3", "G4"]
    back = GeneFamilies.from_dict(json.loads(json.dumps(fam.to_dict())))
    assert back == fam
    bad = fam.to_dict()
    bad["sizes"] = [2, 2]
    with pytest.raises(ValueError, match="sizes"):
        GeneFamilies.from_dict(bad)


def test_family_without_match_is_a_clear_error():
    with pytest.raises(ValueError, match="family 'B' matched none"):
        match_families({"A": ["X"], "B": ["Y"]}, ["X"], source="t.csv")
    with pytest.warns(UserWarning, match="dropped"):
        fam, _ = match_families({"A": ["X"], "B": ["Y"]}, ["X"], allow_empty=True)
    assert fam.names == ("A",)


def test_families_cli_json(blca_path, capsys):
    import argparse

    from pathgen.pipelines import families as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    assert cmd.main(p.parse_args([str(blca_path), "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    fams = out["families"]
    assert [f["name"] for f in fams] == list(MCAT_FAMILIES)
    assert set(fams[0]) == {"name", "n_signature", "n_matched", "missing"}
    for f in fams:
        assert f["n_signature"] - f["n_matched"] == len(f["missing"])
    assert fams[0]["n_matched"] == 82


def test_commands_registered():
    from pathgen.cli import COMMANDS

    assert COMMANDS["families"][0] == "pathgen.pipelines.families"
    assert COMMANDS["make-demo-cohort"][0] == "pathgen.pipelines.make_demo_cohort"


def test_families_command_reports_a_table_that_matches_nothing(tmp_path, capsys):
    """The case `pathgen families` exists to diagnose: the per-family report, then exit 1 (it was a traceback)."""
    from pathgen.cli import main

    t = tmp_path / "wrong.csv"
    t.write_text("Hugo_Symbol,S1\nFOO,1\nBAR,2\n")
    assert main(["families", str(t)]) == 1
    out, err = capsys.readouterr()
    assert "Tumor Suppressor Genes" in out and "matched" in out
    assert "no family matched any gene" in err and "Traceback" not in err
    assert main(["families", str(tmp_path / "missing.csv")]) == 1
    assert "missing.csv" in capsys.readouterr().err
