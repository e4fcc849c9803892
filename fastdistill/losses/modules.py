"""nn.Module wrappers of the functional losses, for trainers that configure losses as modules."""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F


class SiDLoss(nn.Module):
    def __init__(self, alpha: float = 1.2, weight: str = "mean_abs", reduction: str = "mean", loss_scale: float = 1.0, backend: str = "auto"):
        super().__init__()
        self.alpha, self.weight, self.reduction, self.loss_scale, self.backend = alpha, weight, reduction, loss_scale, backend

    def forward(self, y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        return F.sid_loss(y, y_real, y_fake, self.alpha, self.weight, self.reduction, self.loss_scale, self.backend)


class SIMLoss(nn.Module):
    def __init__(self, distance: str = "pseudo_huber", c: float = 1e-3, weight: str = "none", reduction: str = "mean", loss_scale: float = 1.0, backend: str = "auto"):
        super().__init__()
        self.distance, self.c, self.weight = distance, c, weight
        self.reduction, self.loss_scale, self.backend = reduction, loss_scale, backend

    def forward(self, y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        return F.sim_loss(y, y_real, y_fake, self.distance, self.c, self.weight, self.reduction, self.loss_scale, self.backend)


class DMDLoss(nn.Module):
    def __init__(self, normalize: str = "mean_abs", reduction: str = "mean", loss_scale: float = 1.0, backend: str = "auto"):
        super().__init__()
        self.normalize, self.reduction, self.loss_scale, self.backend = normalize, reduction, loss_scale, backend

    def forward(self, y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        return F.dmd_loss(y, y_real, y_fake, self.normalize, self.reduction, self.loss_scale, self.backend)


class DSMLoss(nn.Module):
    def __init__(self, sigma_data: float = 0.5, reduction: str = "mean", loss_scale: float = 1.0, backend: str = "auto"):
        super().__init__()
        self.sigma_data, self.reduction, self.loss_scale, self.backend = sigma_data, reduction, loss_scale, backend

    def forward(self, pred: torch.Tensor, target: torch.Tensor, sigma) -> torch.Tensor:
        return F.dsm_loss(pred, target, sigma, self.sigma_data, self.reduction, self.loss_scale, self.backend)
