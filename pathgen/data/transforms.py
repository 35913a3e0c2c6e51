"""Per-gene expression transforms, fitted on training patients only, saved with the model, invertible.

``ExpressionTransform`` clips each gene to quantiles of its TRAINING values (TCGA z-scores reach
10,000), then scales it:

- ``"standardize"``: (x - mean) / std of the clipped training values;
- ``"minmax"``: to [-1, 1] using the clipped training range (the diffusion model's space);
- ``"minmax01"``: to [0, 1] (PathGen's published per-gene MinMaxScaler, here fitted on train only).

``inverse_transform`` maps model outputs back to the input's units. Clipping is not invertible:
values beyond the training quantiles come back at the clip bounds (documented, not hidden).
``state_dict()`` is plain JSON (lists of floats), ``from_state_dict`` restores it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

METHODS = ("standardize", "minmax", "minmax01")
STATE_VERSION = 1


@dataclass
class ExpressionTransform:
    """Per-gene clipping + scaling.

    Attributes:
        method: ``"standardize"``, ``"minmax"`` ([-1, 1]) or ``"minmax01"`` ([0, 1]).
        clip_quantiles: ``(low, high)`` training quantiles per gene, or ``None`` for no clipping.
        genes: column names the transform was fitted on (checked when frames are transformed).
    """

    method: str = "minmax"
    clip_quantiles: tuple[float, float] | None = (0.01, 0.99)
    genes: list[str] = field(default_factory=list)
    low: np.ndarray | None = None  # [G] clip bounds
    high: np.ndarray | None = None  # [G]
    center: np.ndarray | None = None  # [G]
    scale: np.ndarray | None = None  # [G]
    n_train: int = 0
    n_constant: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.clip_quantiles is not None:
            lo, hi = self.clip_quantiles
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"clip_quantiles must satisfy 0 <= low < high <= 1, got {self.clip_quantiles}")
            self.clip_quantiles = (float(lo), float(hi))

    @property
    def fitted(self) -> bool:
        return self.center is not None

    def _as_array(self, x, where: str) -> np.ndarray:
        if isinstance(x, pd.DataFrame):
            if self.genes and list(map(str, x.columns)) != self.genes:
                missing = [g for g in self.genes if g not in set(map(str, x.columns))]
                if missing or len(x.columns) != len(self.genes):
                    raise ValueError(f"ExpressionTransform.{where}: columns differ from the fitted genes "
                                     f"({len(missing)} missing, e.g. {missing[:5]}); select frame[transform.genes]")
                x = x[self.genes]
            x = x.to_numpy(np.float64)
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"ExpressionTransform.{where}: expected [N, G], got shape {arr.shape}")
        if self.fitted and arr.shape[1] != self.center.shape[0]:
            raise ValueError(f"ExpressionTransform.{where}: {arr.shape[1]} genes, fitted on {self.center.shape[0]}")
        return arr

    def fit(self, x) -> "ExpressionTransform":
        """Fit on TRAINING rows only.

        Args:
            x: ``[N_train, G]`` array or frame (columns become ``genes``).
        """
        if isinstance(x, pd.DataFrame):
            self.genes = [str(c) for c in x.columns]
            self.center = None
        arr = self._as_array(x, "fit")
        if arr.shape[0] < 2:
            raise ValueError(f"ExpressionTransform.fit: need at least 2 training rows, got {arr.shape[0]}")
        if np.isnan(arr).any():
            raise ValueError(f"ExpressionTransform.fit: {int(np.isnan(arr).sum())} NaN values in the training "
                             "rows; impute or drop those genes first (read_expression(on_nan='drop_genes'))")
        if self.clip_quantiles is not None:
            low, high = np.quantile(arr, self.clip_quantiles, axis=0)
        else:
            low, high = arr.min(axis=0), arr.max(axis=0)
        clipped = np.clip(arr, low, high)
        if self.method == "standardize":
            center = clipped.mean(axis=0)
            scale = clipped.std(axis=0)
        elif self.method == "minmax":
            center = (high + low) / 2.0
            scale = (high - low) / 2.0
        else:
            center = low.copy()
            scale = high - low
        constant = scale <= 1e-12
        self.n_constant = int(constant.sum())
        scale = np.where(constant, 1.0, scale)
        self.low, self.high, self.center, self.scale = low, high, center, scale
        self.n_train = int(arr.shape[0])
        return self

    @classmethod
    def fit_on(cls, expression: pd.DataFrame, train_case_ids: Iterable[str], **kwargs) -> "ExpressionTransform":
        """Fit on the rows of ``expression`` (indexed by case_id) listed in ``train_case_ids`` only.

        Raises:
            ValueError: a training case has no expression row.
        """
        ids = list(dict.fromkeys(map(str, train_case_ids)))
        missing = [c for c in ids if c not in expression.index]
        if missing:
            raise ValueError(f"ExpressionTransform.fit_on: {len(missing)} training cases have no expression "
                             f"(e.g. {missing[:5]})")
        return cls(**kwargs).fit(expression.loc[ids])

    def transform(self, x) -> np.ndarray:
        """``[N, G]`` raw values -> model space (float64 array)."""
        if not self.fitted:
            raise RuntimeError("ExpressionTransform.transform before fit")
        arr = self._as_array(x, "transform")
        return (np.clip(arr, self.low, self.high) - self.center) / self.scale

    def inverse_transform(self, y) -> np.ndarray:
        """``[N, G]`` model-space values -> the input's units (float64 array)."""
        if not self.fitted:
            raise RuntimeError("ExpressionTransform.inverse_transform before fit")
        arr = self._as_array(y, "inverse_transform")
        return arr * self.scale + self.center

    def state_dict(self) -> dict:
        """JSON-serialisable state (save it with the model)."""
        if not self.fitted:
            raise RuntimeError("ExpressionTransform.state_dict before fit")
        return {
            "version": STATE_VERSION,
            "method": self.method,
            "clip_quantiles": list(self.clip_quantiles) if self.clip_quantiles is not None else None,
            "genes": list(self.genes),
            "low": self.low.tolist(), "high": self.high.tolist(),
            "center": self.center.tolist(), "scale": self.scale.tolist(),
            "n_train": self.n_train, "n_constant": self.n_constant,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping) -> "ExpressionTransform":
        if state.get("version", STATE_VERSION) != STATE_VERSION:
            raise ValueError(f"ExpressionTransform state version {state.get('version')} is not {STATE_VERSION}")
        cq = state.get("clip_quantiles")
        t = cls(method=state["method"], clip_quantiles=tuple(cq) if cq is not None else None,
                genes=list(state.get("genes", [])))
        for k in ("low", "high", "center", "scale"):
            setattr(t, k, np.asarray(state[k], dtype=np.float64))
        t.n_train = int(state.get("n_train", 0))
        t.n_constant = int(state.get("n_constant", 0))
        return t


def family_matrix(expression: pd.DataFrame, columns: Sequence[str], case_ids: Iterable[str] | None = None
                  ) -> pd.DataFrame:
    """Select the concatenated family columns (``GeneFamilies.columns``, genes may repeat) for some cases.

    Repeated genes get a ``#k`` suffix in the returned column labels so the frame's columns stay unique.

    Raises:
        ValueError: genes or cases missing from the expression frame.
    """
    missing = [g for g in dict.fromkeys(columns) if g not in expression.columns]
    if missing:
        raise ValueError(f"{len(missing)} family genes are not in the expression table (e.g. {missing[:5]}); "
                         "match the families against this table (match_families)")
    rows = expression if case_ids is None else expression.loc[list(case_ids)]
    out = rows.loc[:, list(columns)]
    seen: dict[str, int] = {}
    labels = []
    for g in columns:
        k = seen.get(g, 0)
        labels.append(g if k == 0 else f"{g}#{k}")
        seen[g] = k + 1
    out.columns = labels
    return out
