"""Survival labels: MCAT's discrete time bins, unit conversion, censorship checks.

Convention (MCAT/PORPOISE/SurvPath): ``censorship = 1`` means the event was NOT observed
(patient alive at last follow-up); ``survival_months`` is the follow-up time.

Bins (MCAT ``disc_label``): quartiles of the **uncensored training** times; the outer edges
are widened to cover every training time (min - eps, max + eps); labels are 0-based. Times
outside the training range (test patients) fall into the first or last bin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

DAYS_PER_MONTH = 365.25 / 12.0


def days_to_months(days) -> np.ndarray:
    """Days -> months (365.25 / 12 days per month)."""
    return np.asarray(days, dtype=np.float64) / DAYS_PER_MONTH


def check_survival(times, censorship, *, source: str = "cohort", max_event_rate: float = 0.95) -> None:
    """Refuse survival labels that are missing, negative or look inverted.

    Args:
        times: follow-up times (any unit), one per patient.
        censorship: 1 = censored (event not observed), 0 = event.
        source: a name used in messages.
        max_event_rate: event rates above this suggest the column is an event indicator.

    Raises:
        ValueError: NaN or negative times, censorship values other than 0/1, no events at all
            (all censored), or an event rate above ``max_event_rate`` (inverted coding).
    """
    t = np.asarray(times, dtype=np.float64)
    c = np.asarray(censorship, dtype=np.float64)
    if t.shape != c.shape:
        raise ValueError(f"{source}: {t.shape[0]} times but {c.shape[0]} censorship values")
    if t.size == 0:
        raise ValueError(f"{source}: no patients with survival labels")
    n_nan_t, n_nan_c = int(np.isnan(t).sum()), int(np.isnan(c).sum())
    if n_nan_t or n_nan_c:
        raise ValueError(f"{source}: {n_nan_t} missing survival times and {n_nan_c} missing censorship values; "
                         "drop those patients or fill them in")
    n_neg = int((t < 0).sum())
    if n_neg:
        raise ValueError(f"{source}: {n_neg} negative survival times (min {t.min():g}); times count from "
                         "diagnosis and must be >= 0")
    bad = sorted(set(np.unique(c)) - {0.0, 1.0})
    if bad:
        raise ValueError(f"{source}: censorship must be 0 (event) or 1 (censored), found {bad[:5]}")
    event_rate = float((c == 0).mean())
    if event_rate == 0.0:
        raise ValueError(f"{source}: all {c.size} patients are censored (no event observed); if the column "
                         "is an event indicator (1 = death), pass censorship = 1 - event")
    if event_rate > max_event_rate:
        raise ValueError(f"{source}: event rate {event_rate:.3f} > {max_event_rate} ({int((c == 0).sum())} of "
                         f"{c.size} have censorship 0); this looks like inverted coding. pathgen uses "
                         "censorship = 1 for censored (alive) patients, as MCAT does; pass 1 - column")


@dataclass(frozen=True)
class SurvivalBins:
    """Discrete-time bin edges (``n_bins + 1`` increasing values, in months)."""

    edges: tuple[float, ...]

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def assign(self, times) -> np.ndarray:
        """0-based bin label per time, ``[N]`` int64; times outside the edges go to the end bins."""
        t = np.asarray(times, dtype=np.float64)
        if np.isnan(t).any():
            raise ValueError(f"SurvivalBins.assign: {int(np.isnan(t).sum())} NaN times")
        inner = np.asarray(self.edges[1:-1])
        return np.searchsorted(inner, t, side="right").astype(np.int64)

    def to_dict(self) -> dict:
        return {"edges": [float(e) for e in self.edges], "n_bins": self.n_bins, "unit": "months"}

    @classmethod
    def from_dict(cls, d: Mapping) -> "SurvivalBins":
        return cls(tuple(float(e) for e in d["edges"]))


def fit_survival_bins(times, censorship, n_bins: int = 4, eps: float = 1e-6) -> SurvivalBins:
    """MCAT bins from TRAINING patients (one value per patient).

    Args:
        times: training follow-up times in months, ``[N]``.
        censorship: 1 = censored, ``[N]``.
        n_bins: number of bins (MCAT: 4).
        eps: widening of the outer edges.

    Returns:
        ``SurvivalBins`` whose inner edges are quantiles of the uncensored times and whose outer edges
        are ``min(times) - eps`` and ``max(times) + eps`` over all training patients.

    Raises:
        ValueError: fewer uncensored patients than bins, or tied quantiles (too few distinct times).
    """
    t = np.asarray(times, dtype=np.float64)
    c = np.asarray(censorship, dtype=np.float64)
    check_survival(t, c, source="training survival")
    events = t[c == 0]
    if events.size < n_bins:
        raise ValueError(f"only {events.size} uncensored training patients for {n_bins} bins; use fewer bins")
    q = np.quantile(events, np.linspace(0, 1, n_bins + 1))
    q[0] = t.min() - eps
    q[-1] = t.max() + eps
    if np.any(np.diff(q) <= 0):
        raise ValueError(f"tied survival-bin edges {q.tolist()}: too few distinct uncensored times for {n_bins} "
                         "bins; use fewer bins")
    return SurvivalBins(tuple(float(x) for x in q))
