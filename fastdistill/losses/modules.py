"""nn.Module wrappers of the functional losses, for trainers that configure losses as modules
(the options are those of :mod:`fastdistill.losses.functional`, keyword-only)."""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F


class SiDLoss(nn.Module):
    def __init__(self, *, alpha: float = 1.2, divisor: F.DivisorArg = "mean_abs", reduction: str = "batchmean",
                 loss_scale: float = 1.0, backend: str = "auto"):
        super().__init__()
        self.options = dict(alpha=alpha, divisor=divisor, reduction=reduction, loss_scale=loss_scale, backend=backend)

    def forward(self, y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        return F.sid_loss(y, y_real, y_fake, **self.options)


class SIMLoss(nn.Module):
    def __init__(self, *, distance: str = "pseudo_huber", c: float = 1e-3, divisor: F.DivisorArg = "none",
                 reduction: str = "batchmean", loss_scale: float = 1.0, backend: str = "auto"):
        super().__init__()
        self.options = dict(distance=distance, c=c, divisor=divisor, reduction=reduction, loss_scale=loss_scale,
                            backend=backend)

    def forward(self, y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        return F.sim_loss(y, y_real, y_fake, **self.options)


class DMDLoss(nn.Module):
    def __init__(self, *, divisor: F.DivisorArg = "mean_abs", reduction: str = "batchmean", loss_scale: float = 1.0,
                 backend: str = "auto"):
        super().__init__()
        self.options = dict(divisor=divisor, reduction=reduction, loss_scale=loss_scale, backend=backend)

    def forward(self, y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        return F.dmd_loss(y, y_real, y_fake, **self.options)


class DSMLoss(nn.Module):
    def __init__(self, *, sigma_data: float = 0.5, reduction: str = "batchmean", loss_scale: float = 1.0,
                 backend: str = "auto"):
        super().__init__()
        self.options = dict(sigma_data=sigma_data, reduction=reduction, loss_scale=loss_scale, backend=backend)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, sigma) -> torch.Tensor:
        return F.dsm_loss(pred, target, sigma, **self.options)
