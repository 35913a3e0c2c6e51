"""Cohort data: manifests, expression tables, gene families, leakage-free transforms, survival bins,
patient-level splits, packed patch-feature bags, and the demo cohort.

I/O and data only (no model code). Conventions follow MCAT/PORPOISE/SurvPath so their tables work
unchanged: ``censorship`` 1 = censored, ``<GENE>_rnaseq`` columns, ``splits_{k}.csv`` of case ids.
"""
from pathgen.data.bags import BagItem, PatientBags, collate_bags, read_h5_bag
from pathgen.data.demo_cohort import family_programme_scores, make_demo_cohort, write_pyramid_tiff
from pathgen.data.expression import ExpressionReport, read_expression, table_genes, to_mcat_columns
from pathgen.data.families import (MCAT_FAMILIES, FamilyMatchReport, GeneFamilies, default_signatures_path,
                                   load_gene_families, match_families, read_signatures)
from pathgen.data.manifest import CohortCheck, Manifest, check_cohort, parse_grade, read_manifest
from pathgen.data.splits import Fold, make_folds, read_splits, write_splits
from pathgen.data.survival import SurvivalBins, check_survival, days_to_months, fit_survival_bins
from pathgen.data.transforms import ExpressionTransform, family_matrix

__all__ = [
    "BagItem", "PatientBags", "collate_bags", "read_h5_bag",
    "family_programme_scores", "make_demo_cohort", "write_pyramid_tiff",
    "ExpressionReport", "read_expression", "table_genes", "to_mcat_columns",
    "MCAT_FAMILIES", "FamilyMatchReport", "GeneFamilies", "default_signatures_path", "load_gene_families",
    "match_families", "read_signatures",
    "CohortCheck", "Manifest", "check_cohort", "parse_grade", "read_manifest",
    "Fold", "make_folds", "read_splits", "write_splits",
    "SurvivalBins", "check_survival", "days_to_months", "fit_survival_bins",
    "ExpressionTransform", "family_matrix",
]
