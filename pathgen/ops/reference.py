"""Pure-PyTorch twins of every fused op, with signatures identical to ``pathgen.ops``.

They are the test oracle, the living documentation of what each kernel computes, and the
runtime fallback when ``pathgen._C`` is missing. They favour clarity over speed: each
follows its paper step by step, with the equations numbered.
"""
from __future__ import annotations

import torch

__all__ = ["denoise_step_ref", "coattention_ref"]


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def denoise_step_ref(
    x_t: torch.Tensor,  # [B, G]
    model_output: torch.Tensor,  # [B, G]
    t: torch.Tensor,  # [B] int
    t_prev: torch.Tensor,  # [B] int, -1 = final step
    alphas_cumprod: torch.Tensor,  # [T]
    *,
    mode: str = "ddim",
    eta: float = 0.0,
    prediction: str = "epsilon",
    noise: torch.Tensor | None = None,  # [B, G]
    clip: tuple[float, float] | None = None,
    guidance_scale: float | None = None,
    model_output_uncond: torch.Tensor | None = None,  # [B, G]
    out: torch.Tensor | None = None,  # [B, G]
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One reverse step x_t -> x_{t_prev}, written like a diffusers scheduler's ``step``.

    Math in float32 whatever the storage dtype (float64 for float64 inputs, which makes the
    twin its own high-precision oracle); the result is cast back to ``x_t.dtype``.
    ``noise`` is drawn (``torch.randn``) only when the step is stochastic and none is given.
    """
    dtype = x_t.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = x_t.to(acc)
    m = model_output.to(acc)

    # 0. classifier-free guidance: m = m_u + w (m_c - m_u)   (Ho & Salimans 2022, eq. 6)
    if model_output_uncond is not None:
        mu = model_output_uncond.to(acc)
        m = mu + guidance_scale * (m - mu)

    # 1. alphas: a_t = prod_{s<=t} (1 - beta_s); a_prev = 1 at the final step (t_prev = -1)
    ac = alphas_cumprod.to(device=x.device, dtype=acc)
    a_t = _expand(ac[t.long()], x)
    a_prev = _expand(torch.where(t_prev >= 0, ac[t_prev.long().clamp(min=0)], torch.ones_like(ac[t.long()])), x)
    beta_prod_t = 1 - a_t

    # 2. predicted original sample x0 and noise eps from the model output
    #    (DDPM eq. 15 for epsilon; v-prediction: x0 = sqrt(a) x_t - sqrt(1-a) v)
    if prediction == "epsilon":
        eps = m
        x0 = (x - beta_prod_t.sqrt() * eps) / a_t.sqrt()
    elif prediction == "sample":
        x0 = m
        eps = (x - a_t.sqrt() * x0) / beta_prod_t.sqrt()
    elif prediction == "v_prediction":
        x0 = a_t.sqrt() * x - beta_prod_t.sqrt() * m
        eps = a_t.sqrt() * m + beta_prod_t.sqrt() * x
    else:
        raise ValueError(f"prediction must be epsilon|sample|v_prediction, got {prediction!r}")

    # 3. optional clipping of x0; eps is re-derived so the step stays consistent
    if clip is not None:
        x0 = x0.clamp(clip[0], clip[1])
        eps = (x - a_t.sqrt() * x0) / beta_prod_t.sqrt()

    if mode == "ddpm":
        # 4. posterior q(x_prev | x_t, x0) for the stride t -> t_prev (DDPM eq. 6-7)
        current_alpha_t = a_t / a_prev
        current_beta_t = 1 - current_alpha_t
        x0_coeff = a_prev.sqrt() * current_beta_t / beta_prod_t
        xt_coeff = current_alpha_t.sqrt() * (1 - a_prev) / beta_prod_t
        mean = x0_coeff * x0 + xt_coeff * x
        # 5. posterior variance (eq. 7), and its square root: the STANDARD DEVIATION scales the
        #    noise (the published PathGen code multiplied by the variance)
        variance = ((1 - a_prev) / beta_prod_t * current_beta_t).clamp(min=0)
        std = variance.sqrt()
    elif mode == "ddim":
        # 4. sigma_t(eta) (DDIM eq. 16)
        variance = ((1 - a_prev) / beta_prod_t * (1 - a_t / a_prev)).clamp(min=0)
        std = eta * variance.sqrt()
        # 5. direction pointing to x_t (DDIM eq. 12), then 6. x_prev without noise
        direction = (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
        mean = a_prev.sqrt() * x0 + direction
    else:
        raise ValueError(f"mode must be 'ddpm' or 'ddim', got {mode!r}")

    # 7. add noise where the step is stochastic
    if noise is None and bool((std > 0).any()):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
    prev = mean + std * noise.to(acc) if noise is not None else mean

    result = prev.to(dtype)
    if out is not None:
        out.copy_(result)
        return out
    return result


def coattention_ref(
    q: torch.Tensor,  # [B, M, H, D]
    k: torch.Tensor,  # [total_n, Hkv, D]
    v: torch.Tensor,  # [total_n, Hkv, Dv]
    cu_seqlens: torch.Tensor,  # int32 [B + 1]
    max_seqlen: int | None = None,
    *,
    scale: float | None = None,
    return_probs: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Co-attention of every slide's queries over its packed bag, one slide at a time.

    Same contract as ``pathgen.ops.coattention``: math in float32 (float64 for float64 inputs),
    ``out`` in q.dtype, ``lse``/``probs`` in the math dtype, empty bag -> out 0, lse -inf.
    Differentiable with plain autograd.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, M, H, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv  # query heads per KV head
    scale = D**-0.5 if scale is None else float(scale)
    bounds = cu_seqlens.tolist()
    outs, lses, probs = [], [], []
    for b in range(B):
        start, end = bounds[b], bounds[b + 1]
        # 0. query head h reads KV head h // G (grouped-query sharing)
        kb = k[start:end].to(acc).repeat_interleave(G, dim=1)  # [n, H, D]
        vb = v[start:end].to(acc).repeat_interleave(G, dim=1)  # [n, H, Dv]
        # 1. scaled scores s[h, m, j] = scale <q[b, m, h], k[j, h]>
        scores = torch.einsum("mhd,nhd->hmn", q[b].to(acc), kb) * scale  # [H, M, n]
        # 2. log-sum-exp (-inf for an empty bag) and probabilities p = exp(s - lse)
        lse = torch.logsumexp(scores, dim=-1)  # [H, M]
        p = torch.softmax(scores, dim=-1) if end > start else scores  # [H, M, n]
        # 3. output o = sum_j p_j v_j (zeros for an empty bag)
        outs.append(torch.einsum("hmn,nhd->mhd", p, vb))  # [M, H, Dv]
        lses.append(lse.transpose(0, 1))  # [M, H]
        probs.append(p.permute(2, 0, 1))  # [n, H, M]
    out = torch.stack(outs).to(q.dtype) if B else q.new_zeros((0, M, H, v.shape[2]))
    lse = torch.stack(lses) if B else q.new_zeros((0, M, H), dtype=acc)
    if not return_probs:
        return out, lse
    prob = torch.cat(probs) if B else q.new_zeros((0, H, M), dtype=acc)
    return out, lse, prob
