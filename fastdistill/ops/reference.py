"""Pure-PyTorch score-distillation losses: the correctness oracle (docs/algorithms.md sections 1-4).

Every fused backend must match these functions, loss and gradients, to within dtype
tolerance. They are written for clarity, not speed: plain autograd over fp32 math.

Shared conventions (identical for every backend):
- inputs have a leading batch dimension B; the loss is returned per sample, shape (B,), fp32,
  already multiplied by `scale` (the caller folds loss_scale and the batch mean into it);
- `weight` is the stop-gradient per-sample divisor `w_b`: a (B,) tensor, or None to use
  `max(mean_i |y - y_real|, 1e-5)`; it never receives a gradient;
- non-finite samples: a sample with a NaN, +inf or -inf anywhere in its inputs (y, y_real,
  y_fake; for dsm pred and target), or whose given per-sample weight (dsm: sigma) is not
  finite, has loss exactly 0 and gradient exactly 0 for every input; the other samples are
  unaffected (docs/losses.md, "Non-finite samples").
"""
from __future__ import annotations

from typing import Optional

import torch

WEIGHT_FLOOR = 1e-5


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _math(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 math: half inputs are upcast, float64 (gradcheck) stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def nonfinite_sample_mask(*tensors: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True where a sample has a non-finite value (NaN, +inf or -inf) in any of the tensors."""
    mask = torch.zeros(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        mask |= ~torch.isfinite(_per_sample(t)).all(dim=1)
    return mask


def _clean(mask: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Flatten to (B, N), at least fp32, with masked samples replaced by zeros, so no NaN or inf reaches a gradient."""
    out = []
    for t in tensors:
        flat = _math(_per_sample(t))
        out.append(torch.where(mask[:, None], torch.zeros_like(flat), flat))
    return out


def mean_abs_weight(y: torch.Tensor, y_real: torch.Tensor) -> torch.Tensor:
    """SiD's stop-gradient weight `max(mean_i |y - y_real|, 1e-5)`, shape (B,), fp32."""
    with torch.no_grad():
        diff = (_math(_per_sample(y)) - _math(_per_sample(y_real))).abs().mean(dim=1)
        return diff.clamp_min(WEIGHT_FLOOR)


def _sample_mask(y, y_real, y_fake, weight):
    """The samples that are zeroed: a non-finite input value, or a non-finite given weight."""
    mask = nonfinite_sample_mask(y, y_real, y_fake)
    if weight is not None:
        mask |= ~torch.isfinite(weight.detach().reshape(-1))
    return mask


def _resolve_weight(weight, y, y_real, mask):
    w = mean_abs_weight(y, y_real) if weight is None else _math(weight.detach()).reshape(-1)
    return torch.where(mask, torch.ones_like(w), w)


def sid(y, y_real, y_fake, weight: Optional[torch.Tensor], alpha: float, scale: float) -> torch.Tensor:
    """SiD generator loss: `(1/w) sum_i delta_i (a_i - alpha delta_i)`, delta = yr - yf, a = yr - y."""
    mask = _sample_mask(y, y_real, y_fake, weight)
    w = _resolve_weight(weight, y, y_real, mask)
    y_, yr, yf = _clean(mask, y, y_real, y_fake)
    delta = yr - yf
    loss = (delta * ((yr - y_) - alpha * delta)).sum(dim=1) / w
    return torch.where(mask, torch.zeros_like(loss), loss) * scale


def sim(y, y_real, y_fake, weight: Optional[torch.Tensor], c: float, pseudo_huber: bool, scale: float) -> torch.Tensor:
    """SIM generator loss: `S / N` with S = sum delta*r, N = sqrt(|delta|^2 + c^2) (or N = 1 for l2), over w."""
    mask = _sample_mask(y, y_real, y_fake, weight)
    w = _resolve_weight(weight, y, y_real, mask)
    y_, yr, yf = _clean(mask, y, y_real, y_fake)
    delta = yr - yf
    s = (delta * (yf - y_)).sum(dim=1)
    if pseudo_huber:
        s = s / torch.sqrt((delta * delta).sum(dim=1) + c * c)
    loss = s / w
    return torch.where(mask, torch.zeros_like(loss), loss) * scale


def dmd(y, y_real, y_fake, weight: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """DMD2 loss `0.5 |y - sg(y - g)|^2` with g = (yf - yr)/w; the teacher outputs get no gradient.

    Written in its equal form `0.5 |yf - yr|^2 / w^2` with gradient g into y: the literal form
    loses the loss to cancellation once |y| dwarfs |g| (0 at |y| = 1e18), and this one overflows
    exactly where the fused kernels' sums do.
    """
    mask = _sample_mask(y, y_real, y_fake, weight)
    w = _resolve_weight(weight, y, y_real, mask)
    y_, yr, yf = _clean(mask, y, y_real.detach(), y_fake.detach())
    diff = yf - yr
    w = w.to(diff.dtype)  # a given fp32 weight with float64 inputs: square it in float64
    g = diff / w[:, None]
    loss = 0.5 * (diff * diff).sum(dim=1) / (w * w) + ((y_ - y_.detach()) * g).sum(dim=1)
    return torch.where(mask, torch.zeros_like(loss), loss) * scale


def dsm(pred, target, sigma, sigma_data: float, scale: float) -> torch.Tensor:
    """Fake-score (DSM) loss `lambda(sigma) sum_i (pred - target)^2`, lambda = (s^2+sd^2)/(s*sd)^2."""
    sig = _math(sigma.detach()).reshape(-1)
    mask = nonfinite_sample_mask(pred, target) | ~torch.isfinite(sig)
    p, t = _clean(mask, pred, target)
    sig = torch.where(mask, torch.ones_like(sig), sig)
    lam = (sig**2 + sigma_data**2) / (sig * sigma_data) ** 2
    loss = lam * ((p - t) ** 2).sum(dim=1)
    return torch.where(mask, torch.zeros_like(loss), loss) * scale
