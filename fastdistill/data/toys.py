"""2-D toy distributions as samplers of fresh points (all roughly within [-1.2, 1.2]^2).

- "8gaussians": 8 isotropic Gaussians on the unit circle, std 0.05 (the analytic teacher
  `analytic:8gaussians` is the exact denoiser of this mixture: it is built from `ring_means`).
- "25gaussians": a 5x5 grid of Gaussians, spacing 0.5, std 0.05 (`grid_means`; also with its analytic teacher).
- "checkerboard": uniform on the 8 dark cells of a 4x4 checkerboard covering [-1, 1]^2.
- "swissroll": the 2-D swiss roll (t cos t, t sin t), t in [1.5 pi, 4.5 pi], scaled by 1/(4.5 pi)
  so its outer radius is 1, plus Gaussian noise (std 0.01 by default).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fastdistill.data.base import ToyDataset

__all__ = ["eight_gaussians", "twenty_five_gaussians", "checkerboard", "swiss_roll", "TOYS", "ring_means",
           "grid_means", "mixture_draws"]


def ring_means(n_modes: int = 8, radius: float = 1.0) -> torch.Tensor:
    """``n_modes`` points evenly spaced on a circle, the first at angle 0: (n_modes, 2) float64."""
    if n_modes < 1:
        raise ValueError("n_modes must be >= 1")
    ang = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    return radius * torch.stack([ang.cos(), ang.sin()], dim=1)


def grid_means(n_per_side: int = 5, spacing: float = 0.5) -> torch.Tensor:
    """An n x n grid centred on 0: (n^2, 2) float64."""
    if n_per_side < 1:
        raise ValueError("n_per_side must be >= 1")
    c = (torch.arange(n_per_side, dtype=torch.float64) - (n_per_side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def mixture_draws(probs: torch.Tensor, dim: int, generator: Optional[torch.Generator]):
    """The random part of a Gaussian-mixture draw, in the one order every mixture sampler here
    uses, so that a toy dataset and its analytic teacher give the same samples for a seed: each
    sample's component ``k ~ probs[b]`` ((n, K) rows), then standard normal ``eps`` (n, dim) in
    float64, both on the CPU."""
    k = torch.multinomial(probs.float().cpu(), 1, replacement=True, generator=generator).reshape(-1)
    return k, torch.randn(len(k), dim, generator=generator, dtype=torch.float64)


def _isotropic_mixture(name: str, means: torch.Tensor, std: float) -> ToyDataset:
    """Equal-weight isotropic Gaussians of standard deviation ``std`` around ``means``."""
    variance = torch.as_tensor(std, dtype=torch.float64) ** 2

    def fn(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
        k, eps = mixture_draws(torch.full((n, len(means)), 1.0 / len(means), dtype=torch.float64), means.shape[1], g)
        return means[k] + eps * variance.sqrt()

    return ToyDataset(name, fn)


def eight_gaussians(radius: float = 1.0, std: float = 0.05) -> ToyDataset:
    return _isotropic_mixture("8gaussians", ring_means(8, radius), std)


def twenty_five_gaussians(spacing: float = 0.5, std: float = 0.05) -> ToyDataset:
    return _isotropic_mixture("25gaussians", grid_means(5, spacing), std)


def checkerboard(scale: float = 1.0) -> ToyDataset:
    """Uniform on the cells (i, j) of a 4x4 board with i + j even, board = [-scale, scale]^2."""
    cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float64)

    def fn(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
        k = torch.randint(len(cells), (n,), generator=g)
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        return ((cells[k] + u) / 2.0 - 1.0) * scale

    return ToyDataset("checkerboard", fn)


def swiss_roll(noise: float = 0.01, scale: float = 1.0) -> ToyDataset:
    def fn(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
        t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / (4.5 * math.pi)
        x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
        return x * scale

    return ToyDataset("swissroll", fn)


TOYS = {
    "8gaussians": eight_gaussians,
    "25gaussians": twenty_five_gaussians,
    "checkerboard": checkerboard,
    "swissroll": swiss_roll,
}
