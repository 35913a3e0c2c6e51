"""Predictor configuration: a frozen dataclass serialised into every predictor checkpoint.

Family names and sizes, the patch-feature width and the number of grades come from the data,
never from here (the published code hard-coded KIRC's ``omic_sizes``).
"""
from __future__ import annotations

import dataclasses

KINDS = ("expression", "slide", "multimodal")
GRADE_LOSSES = ("ce", "coral")


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    """Sizes and loss settings of a grade + survival predictor.

    Attributes:
        kind: ``"expression"`` (SNN over the concatenated families), ``"slide"`` (gated ABMIL over
            the patch bag) or ``"multimodal"`` (MCAT-style genomic-guided co-attention).
        family_names, family_sizes: the gene families read by the expression and multimodal models.
        feature_dim: patch-feature width D read by the slide and multimodal models.
        width: hidden width of every branch (MCAT: 256; PathGen: 1024; 64 trains in minutes on CPU).
        n_bins: discrete survival-time bins (MCAT: 4).
        n_grades: grade classes; 0 = no grade head (survival only).
        grade_loss: ``"ce"`` (softmax cross-entropy) or ``"coral"`` (ordinal, C-1 cumulative logits).
        survival_weight: lambda in ``lambda * L_surv + (1 - lambda) * L_grade`` (published: 0.3);
            ignored without a grade head.
        alpha: extra weight of uncensored patients in the survival NLL (MCAT/PathGen: 0).
        dropout: dropout (AlphaDropout in the SNN encoders).
        snn_depth: layers of each SNN encoder (MCAT: 2).
        coattn_heads: heads of the co-attention (MCAT: 1).
        transformer_heads, transformer_layers: the per-branch transformers (MCAT: 8 heads, 2 layers).
    """

    kind: str
    family_names: tuple[str, ...] = ()
    family_sizes: tuple[int, ...] = ()
    feature_dim: int = 0
    width: int = 64
    n_bins: int = 4
    n_grades: int = 0
    grade_loss: str = "ce"
    survival_weight: float = 0.3
    alpha: float = 0.0
    dropout: float = 0.25
    snn_depth: int = 2
    coattn_heads: int = 1
    transformer_heads: int = 4
    transformer_layers: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PredictorConfig.kind must be one of {KINDS}, not {self.kind!r}")
        if len(self.family_names) != len(self.family_sizes):
            raise ValueError(f"PredictorConfig: {len(self.family_names)} family names but "
                             f"{len(self.family_sizes)} sizes")
        if self.kind in ("expression", "multimodal") and (not self.family_sizes or min(self.family_sizes) < 1):
            raise ValueError(f"PredictorConfig: the {self.kind} model needs gene families with at least one gene "
                             f"each, got sizes {list(self.family_sizes)}")
        if self.kind in ("slide", "multimodal") and self.feature_dim < 1:
            raise ValueError(f"PredictorConfig: the {self.kind} model needs feature_dim > 0 (the patch-feature "
                             "width of the .h5 files)")
        if self.n_bins < 1:
            raise ValueError(f"PredictorConfig: n_bins must be >= 1, got {self.n_bins}")
        if self.n_grades == 1 or self.n_grades < 0:
            raise ValueError(f"PredictorConfig: n_grades must be 0 (no grade head) or >= 2, got {self.n_grades}")
        if self.grade_loss not in GRADE_LOSSES:
            raise ValueError(f"PredictorConfig: grade_loss must be one of {GRADE_LOSSES}, not {self.grade_loss!r}")
        if not 0.0 <= self.survival_weight <= 1.0:
            raise ValueError(f"PredictorConfig: survival_weight must be in [0, 1], got {self.survival_weight}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"PredictorConfig: alpha must be in [0, 1], got {self.alpha}")
        if self.width % self.transformer_heads or self.width % self.coattn_heads:
            raise ValueError(f"PredictorConfig: width {self.width} must be divisible by transformer_heads "
                             f"{self.transformer_heads} and coattn_heads {self.coattn_heads}")

    @property
    def has_grade(self) -> bool:
        return self.n_grades >= 2

    @property
    def uses_expression(self) -> bool:
        return self.kind in ("expression", "multimodal")

    @property
    def uses_slides(self) -> bool:
        return self.kind in ("slide", "multimodal")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["family_names"] = list(self.family_names)
        d["family_sizes"] = list(self.family_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "PredictorConfig") -> "PredictorConfig":
        """Rebuild a config from ``to_dict`` output; unknown keys are an error (a newer pathgen's
        field silently dropped would rebuild a different model). ``source`` names the file in errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown predictor config keys {unknown} (this pathgen knows "
                             f"{sorted(names)}); the checkpoint was probably written by another pathgen version: "
                             "load it with that version, or retrain it with this one (`pathgen train-predictor`)")
        kw = dict(d)
        kw["family_names"] = tuple(kw.get("family_names", ()))
        kw["family_sizes"] = tuple(int(s) for s in kw.get("family_sizes", ()))
        return cls(**kw)
