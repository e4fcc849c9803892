"""The teacher interface every part of fastdistill talks to.

A teacher is anything that maps a noisy sample and its noise level to a clean-sample estimate
(the EDM "denoiser" or x0-prediction, docs/algorithms.md section 0). Networks, adapters
(diffusers, VP/VE) and analytic teachers all present this one shape, so the methods and the
engine never care where a teacher came from.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch

from ..conditioning import Conditioning

__all__ = ["Denoiser", "score_from_denoiser", "guided", "GuidedDenoiser"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma, cond=None) -> x0_hat``, float32 in and out.

    x: (B, *data_shape) noisy input; sigma: (B,) noise levels; cond: a
    :class:`~fastdistill.conditioning.Conditioning` (class labels as ``cond.labels``) or None
    for an unconditional teacher (``label_dim == 0``).

    The attributes the code reads: ``sigma_data`` (the data's standard deviation, used by the
    DSM loss weighting), ``img_channels`` and ``img_resolution`` (the sample shape
    ``(C, R, R)`` unless the teacher has ``data_shape``), ``label_dim`` (number of classes, 0
    for none). Optional: ``data_shape``, ``round_sigma(sigma)`` (discrete-time teachers snap
    to their grid), ``sigma_min`` / ``sigma_max`` (the sampler's schedule is clipped to them)
    and ``sample(n, generator)`` (exact samples, analytic teachers).
    """

    sigma_data: float
    img_channels: int
    img_resolution: int
    label_dim: int

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor: ...


def score_from_denoiser(denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score of the noised density, ``(D(x) - x) / sigma^2``, with sigma broadcast per sample."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (denoised - x) / sigma**2


def guided(denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[Conditioning], scale: float) -> torch.Tensor:
    """Classifier-free guidance on the denoiser, ``D(x, u) + scale (D(x, c) - D(x, u))`` with ``u``
    the conditioning's unconditional input, in one pass over the doubled batch (as pipelines do).
    ``scale = 1`` (or no conditioning) is the plain denoiser. The x0, eps, v and flow outputs are
    affine in each other at fixed ``(x, sigma)``, so this equals guidance on any of them."""
    if scale == 1 or cond is None:
        return denoiser(x, sigma, cond)
    both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), Conditioning.cat([cond.unconditional(), cond]))
    d_u, d_c = both.chunk(2)
    return d_u + scale * (d_c - d_u)


class GuidedDenoiser(torch.nn.Module):
    """A denoiser under classifier-free guidance at a fixed ``scale``, for the samplers: calls go
    through :func:`guided`, every other attribute (``sigma_min``, ``round_sigma``, ...) is the
    wrapped denoiser's."""

    def __init__(self, denoiser, scale: float):
        super().__init__()
        self.denoiser = denoiser
        self.scale = float(scale)

    def forward(self, x, sigma, cond=None):
        return guided(self.denoiser, x, sigma, cond, self.scale)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["denoiser"], name)
