"""What every training loop of a network here shares, written once: the learning-rate schedule
(linear warm-up times cosine decay), the weights' EMA with EDM's ramp-up, the gradient clean-up,
and the EDM denoising loss (on the fused DSM loss). Its users: teacher training
(:mod:`.training`), the digits-t2i UNet (:mod:`.digits_t2i`), the MLP fitted to an analytic
teacher and the distillation loop's EMA and updates (:mod:`fastdistill.engine`)."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

from ..losses import dsm_loss

__all__ = ["lr_factor", "ema_beta", "ema_update", "sanitize_gradients", "edm_loss"]


def lr_factor(step: int, steps: int, warmup: int = 0, decay: str = "none") -> float:
    """The learning rate's factor at ``step`` (from 0) of ``steps``: a linear warm-up over the first
    ``warmup`` steps, times ``0.5 (1 + cos(pi step / steps))`` for ``decay="cosine"``."""
    f = 1.0
    if warmup > 0:
        f = min(f, (step + 1) / warmup)
    if decay == "cosine":
        f *= 0.5 * (1 + math.cos(math.pi * step / steps))
    return f


def ema_beta(batch: int, seen: float, halflife: float, rampup: Optional[float] = None) -> float:
    """``0.5 ** (batch / h)``: the EMA's decay for one step of ``batch`` samples with a half-life of
    ``halflife`` samples, capped at ``rampup * seen`` (EDM's ramp-up; None or 0: no cap)."""
    h = min(halflife, rampup * seen) if rampup else halflife
    return 0.5 ** (batch / max(h, 1e-8))


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * net for parameters; buffers are copied."""
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p.detach(), 1.0 - beta)
    for be, b in zip(ema.buffers(), net.buffers()):
        be.copy_(b)


def sanitize_gradients(grads: Iterable[torch.Tensor]) -> None:
    """EDM's and SiD's gradient clean-up, in place: NaN to 0, +-inf to +-1e5."""
    for g in grads:
        torch.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5, out=g)


def edm_loss(
    net: nn.Module,
    x0: torch.Tensor,
    class_labels: Optional[torch.Tensor] = None,
    *,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """EDM denoising loss on clean data x0 (B, ...).

    reduction: "none" -> per-sample sums over elements (B,); "sum" -> their sum;
    "mean" -> mean over batch and elements (the scale of the raw network's MSE, ~1 at init).
    Noise is drawn from `generator` on the CPU (reproducible on any device).
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    if not torch.is_tensor(x0) or not x0.is_floating_point() or x0.ndim < 2:
        raise ValueError("x0 must be a floating-point tensor of shape (B, ...)")
    sd = float(sigma_data if sigma_data is not None else net.sigma_data)
    B = x0.shape[0]
    rnd = torch.randn(B, generator=generator, dtype=torch.float32)
    sigma = (rnd * P_std + P_mean).exp().to(x0.device)
    n = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    D = net(x0 + sigma.reshape(shape) * n, sigma, class_labels)
    if reduction == "mean":  # the per-sample sums over all elements
        return dsm_loss(D, x0, sigma, sigma_data=sd, reduction="sum") / x0.numel()
    return dsm_loss(D, x0, sigma, sigma_data=sd, reduction=reduction)
