"""The PathGen denoiser, corrected (PATHGEN_SPEC.md section 11, items 6-8).

Per family g, the noisy expression x_t^(g) [G_g] is encoded to a token and tagged with a learnable
family embedding (the published model's six queries were identical, so every family shared one
context). L pre-norm residual blocks follow, each modulated by the timestep through adaptive
LayerNorm with zero-initialised gates (DiT's adaLN-Zero):

    tokens += gate1 * CoAttention(adaLN1(tokens), patches)     # family tokens read the patch bag
    tokens += gate2 * SelfAttention(adaLN2(tokens))            # families exchange information
    tokens += gate3 * MLP(adaLN3(tokens))

and per-family decoders map tokens back to gene space (epsilon or v). Patch features are
standardised per feature (training-patch statistics) and projected ONCE per slide
(``encode_context``); every denoising step then reads them through ``pathgen.nn.CoAttention`` in its folded form, whose per-step cost is one pass over
the projected bag and which never materialises per-patch keys or values. K samples of one slide
share the pass: their K x F tokens are the op's query rows for that slide.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from pathgen.models.generator.config import GeneratorConfig
from pathgen.nn import CoAttention


@dataclasses.dataclass
class SlideContext:
    """Projected patch bags, computed once per batch of slides and reused at every step."""

    x: torch.Tensor  # [total_n, ctx_dim]
    cu_seqlens: torch.Tensor  # [n_bags + 1] int32
    max_seqlen: int

    @property
    def n_bags(self) -> int:
        return self.cu_seqlens.numel() - 1


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of integer timesteps t [B] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def mlp(sizes: list[int], dropout: float, last_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_act:
            layers += [nn.Mish(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DenoiserBlock(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.cross = CoAttention(d, cfg.n_heads, kdim=cfg.ctx_dim, vdim=cfg.ctx_dim, form=cfg.attention_form)
        self.null_context = nn.Parameter(torch.zeros(d))  # cross-attention output when the slide is dropped
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.self_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 9 * d))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, h: torch.Tensor,  # [B, F, d] family tokens, B = n_bags * K
                c: torch.Tensor,  # [B, d] timestep conditioning
                ctx: SlideContext | None, cond: torch.Tensor | None,  # [B] bool: slide kept
                samples_per_bag: int, need_weights: bool):
        s1, b1, g1, s2, b2, g2, s3, b3, g3 = self.ada(c).chunk(9, dim=-1)
        B, Fm, d = h.shape
        probs = None
        q = modulate(self.norm1(h), b1, s1)
        if ctx is None:  # unconditional branch (guidance): no patch reads at all
            a = self.null_context.expand(B, Fm, d)
        else:
            k = samples_per_bag
            a, probs = self.cross(q.reshape(B // k, k * Fm, d), ctx.x, ctx.cu_seqlens, ctx.max_seqlen,
                                  need_weights=need_weights)
            a = a.reshape(B, Fm, d)
            if cond is not None:
                a = torch.where(cond[:, None, None], a, self.null_context.expand(B, Fm, d))
        h = h + g1.unsqueeze(1) * a
        y = modulate(self.norm2(h), b2, s2)
        h = h + g2.unsqueeze(1) * self.self_attn(y, y, y, need_weights=False)[0]
        h = h + g3.unsqueeze(1) * self.mlp(modulate(self.norm3(h), b3, s3))
        return h, probs


class PathGenDenoiser(nn.Module):
    """Predicts epsilon (or v) for the concatenated families [B, G_total] given the slide."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.family_sizes = list(cfg.family_sizes)
        self.encoders = nn.ModuleList(mlp([g, *cfg.encoder_hidden, d], cfg.dropout) for g in cfg.family_sizes)
        self.decoders = nn.ModuleList(mlp([d, *cfg.decoder_hidden, g], cfg.dropout) for g in cfg.family_sizes)
        self.family_embedding = nn.Parameter(torch.randn(len(cfg.family_sizes), d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        # "standardize": per feature, with the mean / sd of the TRAINING patients' patches
        # (``set_patch_stats``); "layernorm": per patch (published), which removes each patch's overall
        # level and scale across features. On the demo cohort's stain statistics that level is the
        # signal (fold 0, same model and training: held-out per-gene Spearman peaks at 0.42 with
        # standardisation, 0.32 with LayerNorm; ridge 0.40).
        if cfg.patch_norm == "standardize":
            self.patch_norm = nn.Identity()
            self.register_buffer("patch_mean", torch.zeros(cfg.patch_dim))
            self.register_buffer("patch_std", torch.ones(cfg.patch_dim))
        else:
            self.patch_norm = nn.LayerNorm(cfg.patch_dim)
        self.patch_proj = nn.Linear(cfg.patch_dim, cfg.ctx_dim)
        self.blocks = nn.ModuleList(DenoiserBlock(cfg) for _ in range(cfg.n_blocks))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        nn.init.zeros_(self.final_ada[1].weight)
        nn.init.zeros_(self.final_ada[1].bias)

    @torch.no_grad()
    def set_patch_stats(self, mean: torch.Tensor,  # [patch_dim]
                        std: torch.Tensor) -> None:  # [patch_dim]
        """Per-feature standardisation of patches (fit on training patients only)."""
        self.patch_mean.copy_(mean)
        self.patch_std.copy_(std.clamp_min(1e-6))

    def encode_context(self, features: torch.Tensor,  # [total_n, patch_dim]
                       cu_seqlens: torch.Tensor,  # [n_bags + 1] int32
                       max_seqlen: int | None = None) -> SlideContext:
        """Normalise and project the patch bags once; reuse the result at every denoising step."""
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
        if self.cfg.patch_norm == "standardize":
            features = (features - self.patch_mean) / self.patch_std
        x = self.patch_proj(self.patch_norm(features))
        return SlideContext(x=x, cu_seqlens=cu_seqlens.to(torch.int32), max_seqlen=int(max_seqlen))

    def forward(self, x_t: torch.Tensor,  # [B, G_total], B = n_bags * samples_per_bag (bag-major)
                t: torch.Tensor,  # [B] int
                ctx: SlideContext | None,
                cond: torch.Tensor | None = None,  # [B] bool, False = slide dropped (CFG training)
                samples_per_bag: int = 1,
                need_weights: bool = False):
        """Returns the prediction [B, G_total] (and, with ``need_weights``, the per-block
        co-attention probabilities [total_n, H, K * F])."""
        parts = torch.split(x_t, self.family_sizes, dim=1)
        h = torch.stack([enc(p) for enc, p in zip(self.encoders, parts)], dim=1)  # [B, F, d]
        h = h + self.family_embedding
        c = self.time_mlp(timestep_embedding(t, self.cfg.time_dim))  # [B, d]
        maps = []
        for block in self.blocks:
            h, probs = block(h, c, ctx, cond, samples_per_bag, need_weights)
            maps.append(probs)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        h = modulate(self.final_norm(h), shift, scale)
        out = torch.cat([dec(h[:, i]) for i, dec in enumerate(self.decoders)], dim=1)  # [B, G_total]
        return (out, maps) if need_weights else out
