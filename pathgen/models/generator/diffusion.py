"""Training objective and samplers of the generator (all sampling steps go through the fused
``pathgen.ops.denoise_step``)."""
from __future__ import annotations

import torch

from pathgen.diffusion import NoiseSchedule, ddim_timesteps
from pathgen.models.generator.model import PathGenDenoiser, SlideContext
from pathgen.ops import denoise_step


def family_loss(pred: torch.Tensor,  # [B, G_total]
                target: torch.Tensor,  # [B, G_total]
                family_sizes: list[int], kind: str = "l1_mse") -> torch.Tensor:
    """PathGen's loss: per family, (mean |e| + mean e^2) / 2, averaged over families
    (``kind="mse"``: mean e^2 per family, averaged)."""
    losses = []
    for e in torch.split(pred - target, family_sizes, dim=1):
        mse = e.pow(2).mean()
        losses.append(mse if kind == "mse" else 0.5 * (e.abs().mean() + mse))
    return torch.stack(losses).mean()


def training_loss(model: PathGenDenoiser, schedule: NoiseSchedule,
                  x0: torch.Tensor,  # [B, G_total] transformed expression
                  ctx: SlideContext, generator: torch.Generator | None = None, draws: int = 1) -> torch.Tensor:
    """Sample t ~ U{0..T-1} and noise, noise x0 (DDPM eq. 4), predict, and score.

    ``draws`` > 1 noises every patient's expression that many times (each with its own t and
    noise) in one pass: the draws of a slide share its co-attention pass over the patch bag (they
    are extra query rows, like the K samples at synthesis), so each step sees ``draws`` times more
    (noise level, target) pairs for little more than the cost of one.
    """
    cfg = model.cfg
    if draws > 1:
        x0 = x0.repeat_interleave(draws, dim=0)  # [n_bags * draws, G_total], bag-major
    B = x0.shape[0]
    dev = x0.device
    t = torch.randint(0, schedule.num_train_timesteps, (B,), device=dev, generator=generator)
    noise = torch.randn(x0.shape, device=dev, generator=generator)
    x_t = schedule.add_noise(x0, noise, t)
    cond = None
    if cfg.cond_dropout > 0 and model.training:
        cond = torch.rand(B, device=dev, generator=generator) >= cfg.cond_dropout
    pred = model(x_t, t, ctx, cond=cond, samples_per_bag=draws)
    if cfg.prediction == "epsilon":
        target = noise
    elif cfg.prediction == "v_prediction":
        target = schedule.velocity(x0, noise, t)
    else:  # "sample": the network predicts x0, which lives near the low-dimensional family programmes
        target = x0
    return family_loss(pred, target, list(cfg.family_sizes), cfg.loss)


@torch.no_grad()
def sample(model: PathGenDenoiser, schedule: NoiseSchedule, ctx: SlideContext, *,
           samples_per_bag: int = 3, steps: int = 50, mode: str = "ddim", eta: float = 0.0,
           guidance_scale: float | None = None, generator: torch.Generator | None = None,
           need_weights: bool = False, progress=None):
    """Draw K = ``samples_per_bag`` expression samples per slide.

    All slides x samples run together: x [n_bags * K, G_total], bag-major. DDIM with ``steps``
    steps (default) or DDPM over all T steps (``mode="ddpm"``). With ``guidance_scale`` w, the
    prediction is eps_u + w (eps_c - eps_u), fused into the step (the unconditional branch reads
    no patches). Returns x0 samples [n_bags, K, G_total] (and the co-attention maps of the last
    step, per block: [total_n, H, K * F], when ``need_weights``).
    """
    cfg = model.cfg
    K = samples_per_bag
    B = ctx.n_bags * K
    dev = ctx.x.device
    ac = schedule.alphas_cumprod.to(dev)
    T = schedule.num_train_timesteps
    ts = ddim_timesteps(T, steps) if mode == "ddim" else list(range(T))[::-1]
    x = torch.randn(B, cfg.n_genes, device=dev, generator=generator)
    maps = None
    iterator = progress(range(len(ts))) if progress else range(len(ts))
    for i in iterator:
        t = torch.full((B,), ts[i], device=dev, dtype=torch.long)
        t_prev = torch.full((B,), ts[i + 1] if i + 1 < len(ts) else -1, device=dev, dtype=torch.long)
        last = i == len(ts) - 1
        if need_weights and last:
            pred, maps = model(x, t, ctx, samples_per_bag=K, need_weights=True)
        else:
            pred = model(x, t, ctx, samples_per_bag=K)
        uncond = model(x, t, None, samples_per_bag=K) if guidance_scale is not None else None
        stochastic = mode == "ddpm" or eta > 0
        noise = torch.randn(x.shape, device=dev, generator=generator) if stochastic and not last else None
        x = denoise_step(x, pred, t, t_prev, ac, mode=mode, eta=eta, prediction=cfg.prediction, noise=noise,
                         clip=cfg.clip_sample, guidance_scale=guidance_scale, model_output_uncond=uncond,
                         out=x)
    x = x.view(ctx.n_bags, K, cfg.n_genes)
    return (x, maps) if need_weights else x
