"""2-D toy distributions as samplers of fresh points (all roughly within [-1.2, 1.2]^2).

- "8gaussians": 8 isotropic Gaussians on the unit circle, std 0.05 (exactly the analytic
  teacher `fastdistill.teachers.analytic.eight_gaussians`, attached as `.teacher`).
- "25gaussians": a 5x5 grid of Gaussians, spacing 0.5, std 0.05 (also with its analytic teacher).
- "checkerboard": uniform on the 8 dark cells of a 4x4 checkerboard covering [-1, 1]^2.
- "swissroll": the 2-D swiss roll (t cos t, t sin t), t in [1.5 pi, 4.5 pi], scaled by 1/(4.5 pi)
  so its outer radius is 1, plus Gaussian noise (std 0.01 by default).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fastdistill.data.base import ToyDataset
from fastdistill.teachers.analytic import eight_gaussians as _eight_gaussians_teacher
from fastdistill.teachers.analytic import grid_of_gaussians as _grid_teacher

__all__ = ["eight_gaussians", "twenty_five_gaussians", "checkerboard", "swiss_roll", "TOYS"]


def eight_gaussians(radius: float = 1.0, std: float = 0.05) -> ToyDataset:
    t = _eight_gaussians_teacher(radius=radius, std=std)
    return ToyDataset("8gaussians", lambda n, g: t.sample(n, g), teacher=t)


def twenty_five_gaussians(spacing: float = 0.5, std: float = 0.05) -> ToyDataset:
    t = _grid_teacher(5, spacing=spacing, std=std)
    return ToyDataset("25gaussians", lambda n, g: t.sample(n, g), teacher=t)


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
