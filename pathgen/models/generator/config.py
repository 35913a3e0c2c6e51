"""Generator configuration: a frozen dataclass serialised into every checkpoint."""
from __future__ import annotations

import dataclasses
import json

from pathgen.diffusion import ScheduleConfig


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Sizes and diffusion settings of the PathGen generator.

    Family names and sizes come from the data (``pathgen.data.families``), never from here.
    """

    family_names: tuple[str, ...]
    family_sizes: tuple[int, ...]
    patch_dim: int
    d_model: int = 128
    n_heads: int = 4
    n_blocks: int = 3
    ctx_dim: int = 128  # patch features are normalised + projected once to this width
    encoder_hidden: tuple[int, ...] = (256,)
    decoder_hidden: tuple[int, ...] = (256,)
    time_dim: int = 128
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    prediction: str = "epsilon"  # "epsilon" (PathGen) | "v_prediction" | "sample" (x0)
    loss: str = "l1_mse"  # "(L1 + MSE)/2 per family" (PathGen) | "mse"
    cond_dropout: float = 0.1  # P(drop the slide) in training: enables classifier-free guidance
    clip_sample: tuple[float, float] | None = None  # clamp of predicted x0 while sampling
    patch_norm: str = "standardize"  # per feature with training-patch stats | "layernorm" (per patch, published)
    attention_form: str = "auto"  # "auto" | "folded" | "unfolded" (pathgen.nn.CoAttention)
    schedule: ScheduleConfig = ScheduleConfig()

    def __post_init__(self):
        if len(self.family_names) != len(self.family_sizes):
            raise ValueError("family_names and family_sizes differ in length")
        if self.prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction must be epsilon|v_prediction|sample, got {self.prediction!r}")
        if self.loss not in ("l1_mse", "mse"):
            raise ValueError(f"loss must be l1_mse|mse, got {self.loss!r}")
        if self.patch_norm not in ("layernorm", "standardize"):
            raise ValueError(f"patch_norm must be layernorm|standardize, got {self.patch_norm!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")

    @property
    def n_genes(self) -> int:
        return sum(self.family_sizes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists, plain JSON types

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        """The config saved by ``to_dict``. Missing optional fields take their defaults
        (``patch_norm`` the pre-option "layernorm"); unknown fields, here or in ``schedule``, are a
        ``ValueError`` (a config from a newer pathgen would otherwise build a different model)."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        schedule = dict(d.get("schedule") or {})
        unknown += sorted(f"schedule.{k}" for k in set(schedule) - {f.name for f in dataclasses.fields(ScheduleConfig)})
        if unknown:
            raise ValueError(f"unknown generator config fields {unknown}: written by a newer pathgen; upgrade "
                             "pathgen (`pip install -U pathgen`) or re-train the generator with this version")
        d.setdefault("patch_norm", "layernorm")  # checkpoints written before the option existed
        d["schedule"] = ScheduleConfig.from_dict(schedule)
        for k in ("family_names", "family_sizes", "encoder_hidden", "decoder_hidden"):
            d[k] = tuple(d[k])
        if d.get("clip_sample") is not None:
            d["clip_sample"] = tuple(d["clip_sample"])
        return cls(**d)


PRESETS: dict[str, dict] = {
    # trains on a 2-core CPU in minutes (the demo)
    "small": dict(d_model=128, n_heads=4, n_blocks=3, ctx_dim=128, encoder_hidden=(256,), decoder_hidden=(256,),
                  time_dim=128, dropout=0.1),
    # close to the published width (d = 1024, encoders 2048-4096-4096-1024), for GPUs
    "paper": dict(d_model=1024, n_heads=8, n_blocks=3, ctx_dim=1024, encoder_hidden=(2048, 4096, 4096),
                  decoder_hidden=(4096, 4096, 2048), time_dim=128, dropout=0.25),
}


def make_config(preset: str, family_names, family_sizes, patch_dim: int, **overrides) -> GeneratorConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown generator preset {preset!r}; choose from {sorted(PRESETS)}")
    kw = {**PRESETS[preset], **overrides}
    return GeneratorConfig(family_names=tuple(family_names), family_sizes=tuple(int(s) for s in family_sizes),
                           patch_dim=int(patch_dim), **kw)
