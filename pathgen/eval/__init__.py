"""Evaluation layer: survival, grade and generator-fidelity metrics (``metrics``), patient-level
bootstrap and paired tests (``stats``), split conformal prediction (``conformal``) and the
per-group fairness audit (``fairness``). Numpy/pandas in, plain dicts and dataclasses out."""
