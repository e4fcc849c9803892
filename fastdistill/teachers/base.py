"""The teacher interface every part of fastdistill talks to.

A teacher is anything that maps a noisy image and its noise level to a clean-image
estimate (the EDM "denoiser" or x0-prediction, ALGORITHMS.md section 0). Networks,
adapters (diffusers, VP/VE) and analytic teachers all present this one shape, so the
methods and the engine never care where a teacher came from.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    """`D(x, sigma, class_labels) -> x0_hat`, float32 in and out.

    x: (B, *data_shape) noisy input; sigma: (B,) or broadcastable noise levels;
    class_labels: (B, label_dim) one-hot or None when `label_dim == 0`.
    """

    sigma_data: float
    img_channels: int
    img_resolution: int
    label_dim: int

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Optional[torch.Tensor] = None
    ) -> torch.Tensor: ...


def score_from_denoiser(denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score of the noised density, `(D(x) - x) / sigma^2`, with sigma broadcast per sample."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (denoised - x) / sigma**2
