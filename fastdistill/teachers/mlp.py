"""A small time-conditioned MLP denoiser with EDM preconditioning, for vector (e.g. 2-D) data.

    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, label)

with the EDM coefficients of docs/algorithms.md section 0 (`c_noise = ln(sigma)/4`). F is an MLP of
residual SiLU blocks; the noise level enters as sinusoidal features of c_noise, projected and
added to every block (together with a learned class embedding when label_dim > 0).

Data shape: `data_shape=(d,)`, so `img_channels = d` and `img_resolution = 1`; inputs may be
(B, d) or any (B, ...) with d values per sample. The class is registered with the teacher
checkpoint format, so `save_teacher(net, path)` / `load_teacher(path)` round-trip it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..conditioning import labels_of
from .checkpoint import register_teacher_class

__all__ = ["MLPDenoiser"]


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h, e):
        y = self.fc1(self.act(self.norm(h))) + self.emb(e)
        return h + self.fc2(self.act(y))


@register_teacher_class
class MLPDenoiser(nn.Module):
    """EDM-preconditioned MLP denoiser.

    Args:
        data_dim: d, values per sample (2 for the 2-D toys); or give data_shape.
        width, depth: hidden width and number of residual blocks.
        emb_dim: size of the noise-level (and label) embedding.
        label_dim: number of classes (0 = unconditional).
        sigma_data: data std for the preconditioning (0.5 by EDM convention; measure it for toys).
        sigma_min, sigma_max: the range the sampler clips to (0 and inf = no limits).
    """

    def __init__(
        self,
        data_dim: Optional[int] = None,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        label_dim: int = 0,
        sigma_data: float = 0.5,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        data_shape: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if data_shape is None:
            if data_dim is None:
                raise ValueError("give data_dim or data_shape")
            data_shape = (int(data_dim),)
        data_shape = tuple(int(s) for s in data_shape)
        d = int(math.prod(data_shape))
        if data_dim is not None and int(data_dim) != d:
            raise ValueError(f"data_dim {data_dim} does not match data_shape {data_shape}")
        if d < 1 or width < 1 or depth < 0 or emb_dim < 2 or emb_dim % 2:
            raise ValueError("need data_dim >= 1, width >= 1, depth >= 0 and an even emb_dim >= 2")
        if not sigma_data > 0:
            raise ValueError("sigma_data must be positive")
        self.init_kwargs = dict(data_dim=None, width=int(width), depth=int(depth), emb_dim=int(emb_dim),
                                label_dim=int(label_dim), sigma_data=float(sigma_data), sigma_min=float(sigma_min),
                                sigma_max=float(sigma_max), data_shape=list(data_shape))
        self.data_shape = data_shape
        self.dim = d
        self.img_channels, self.img_resolution = (data_shape[0], data_shape[-1]) if len(data_shape) == 3 else (d, 1)
        self.label_dim = int(label_dim)
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.emb_dim = int(emb_dim)
        half = emb_dim // 2
        # fixed log-spaced frequencies for c_noise (which spans about [-1.6, 1.1] for sigma in [0.002, 80])
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), half)), persistent=False)
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Linear(self.label_dim, emb_dim, bias=False) if self.label_dim else None
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _embed(self, c_noise: torch.Tensor, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
        a = c_noise[:, None] * self.freqs[None]
        e = self.emb_mlp(torch.cat([a.cos(), a.sin()], dim=1))
        if self.label_emb is not None and class_labels is not None:
            e = e + self.label_emb(class_labels.to(e.dtype).reshape(-1, self.label_dim))
        return e

    def forward(self, x: torch.Tensor, sigma, cond=None, *, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        class_labels = labels_of(cond, class_labels)
        if x.ndim < 1 or x.numel() != x.shape[0] * self.dim:
            raise ValueError(f"x must be (B, *{self.data_shape}), got {tuple(x.shape)}")
        B = x.shape[0]
        xf = x.reshape(B, self.dim).to(torch.float32)
        s = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1)
        if s.numel() == 1:
            s = s.expand(B)
        if s.numel() != B:
            raise ValueError(f"sigma must be a scalar or (B,) = ({B},), got {tuple(torch.as_tensor(sigma).shape)}")
        if class_labels is not None and self.label_dim == 0:
            raise ValueError("class_labels given to an unconditional MLPDenoiser (label_dim 0)")
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1.0 / (s**2 + sd**2).sqrt()
        c_noise = s.log() / 4
        h = self.inp(c_in[:, None] * xf)
        e = self._embed(c_noise, class_labels)
        for blk in self.blocks:
            h = blk(h, e)
        F = self.out(torch.nn.functional.silu(self.out_norm(h)))
        D = c_skip[:, None] * xf + c_out[:, None] * F
        return D.reshape(x.shape)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)
