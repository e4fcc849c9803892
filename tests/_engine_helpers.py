"""Small networks and configs shared by the engine tests (not a library module)."""
from __future__ import annotations

import torch
from torch import nn

from fastdistill.engine import DistillConfig


class TinyDenoiser(nn.Module):
    """An EDM-preconditioned 2-layer MLP denoiser for vector data, small enough for unit tests."""

    sigma_data = 0.5
    label_dim = 0

    def __init__(self, dim: int = 2, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.dim = dim
        self.data_shape = (dim,)
        self.img_channels, self.img_resolution = dim, 1
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x, sigma, class_labels=None):
        s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        sd = self.sigma_data
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, s.log() / 4], 1))


def tiny_teacher(seed: int = 0, **kw) -> TinyDenoiser:
    torch.manual_seed(seed)
    return TinyDenoiser(**kw)


def tiny_config(out_dir, **over) -> DistillConfig:
    items = {"teacher.kind": "network", "steps": 6, "batch_size": 16, "out_dir": str(out_dir), "resume": "none",
             "progress": False, "ckpt_every": 0, "log_every": 1, "optim.lr": 1e-3, "method.backend": "reference",
             "nvtx": False, "threads": 1}
    items.update(over)
    return DistillConfig().with_overrides([f"{k}={v}" for k, v in items.items()])


def params_of(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]
