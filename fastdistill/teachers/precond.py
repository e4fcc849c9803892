"""Preconditioners that turn a raw network F into a denoiser D(x; sigma) (docs/algorithms.md section 0).

``EDMPrecond``, ``VPPrecond`` and ``VEPrecond`` follow the definitions of Karras et al. (2022),
Table 1, with the same constructor arguments as EDM's classes (so EDM/SiD checkpoints can be
rebuilt from their recorded keyword arguments) and the wrapped network stored as ``model``.
Input, sigma and output are float32; with ``use_fp16`` the network runs in float16 on CUDA.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..conditioning import labels_of
from .networks import NETWORK_CLASSES

__all__ = ["EDMPrecond", "VPPrecond", "VEPrecond", "PRECOND_CLASSES"]


def _build_model(model_type: str, img_resolution: int, img_channels: int, label_dim: int,
                 model_kwargs: dict) -> nn.Module:
    if model_type not in NETWORK_CLASSES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(NETWORK_CLASSES)}")
    return NETWORK_CLASSES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                       out_channels=img_channels, label_dim=label_dim,
                                       **model_kwargs)


class _Precond(nn.Module):
    """Shared plumbing: dtype handling, label shapes and the model call."""

    label_dim: int
    use_fp16: bool

    def _prepare(self, x, sigma, class_labels):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32)
        if sigma.numel() == 1 and x.shape[0] != 1:
            sigma = sigma.reshape(1).expand(x.shape[0])
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        return x, sigma, class_labels

    def _dtype(self, x, force_fp32):
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        return torch.float16 if use_half else torch.float32

    def _run(self, x_in, c_noise, class_labels, dtype, augment_labels, model_kwargs):
        if augment_labels is not None:
            model_kwargs = dict(model_kwargs, augment_labels=augment_labels.to(dtype))
        out = self.model(x_in.to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        allowed = {dtype}
        device = x_in.device.type
        if torch.is_autocast_enabled(device):  # mixed precision: the network computes in the autocast dtype
            allowed.add(torch.get_autocast_dtype(device))
        if out.dtype not in allowed:
            raise RuntimeError(f"{type(self).__name__}: network returned {out.dtype}, expected {dtype}")
        return out.to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class EDMPrecond(_Precond):
    """EDM preconditioning: D = c_skip x + c_out F(c_in x, ln(sigma)/4)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, sigma_min: float = 0.0, sigma_max: float = float("inf"),
                 sigma_data: float = 0.5, model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__()
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                                label_dim=label_dim, use_fp16=bool(use_fp16),
                                sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                                sigma_data=float(sigma_data), model_type=model_type, **model_kwargs)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = bool(use_fp16)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.model = _build_model(model_type, img_resolution, img_channels, label_dim, model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None,
                augment_labels: Optional[torch.Tensor] = None, force_fp32: bool = False, *,
                class_labels: Optional[torch.Tensor] = None, **model_kwargs) -> torch.Tensor:
        x, sigma, class_labels = self._prepare(x, sigma, labels_of(cond, class_labels))
        dtype = self._dtype(x, force_fp32)
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self._run(c_in * x, c_noise, class_labels, dtype, augment_labels, model_kwargs)
        return c_skip * x + c_out * F_x


class VPPrecond(_Precond):
    """Variance-preserving (DDPM++ / VP-SDE) preconditioning, EDM Table 1:
    c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1), c_noise = (M-1) t(sigma)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, beta_d: float = 19.9, beta_min: float = 0.1,
                 M: int = 1000, epsilon_t: float = 1e-5, model_type: str = "SongUNet",
                 sigma_data: float = 0.5, **model_kwargs):
        super().__init__()
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                                label_dim=label_dim, use_fp16=bool(use_fp16), beta_d=float(beta_d),
                                beta_min=float(beta_min), M=int(M), epsilon_t=float(epsilon_t),
                                model_type=model_type, sigma_data=float(sigma_data), **model_kwargs)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = bool(use_fp16)
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        self.sigma_data = float(sigma_data)  # not used by the preconditioning; for DSM weighting
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self.model = _build_model(model_type, img_resolution, img_channels, label_dim, model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None,
                augment_labels: Optional[torch.Tensor] = None, force_fp32: bool = False, *,
                class_labels: Optional[torch.Tensor] = None, **model_kwargs) -> torch.Tensor:
        x, sigma, class_labels = self._prepare(x, sigma, labels_of(cond, class_labels))
        dtype = self._dtype(x, force_fp32)
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        F_x = self._run(c_in * x, c_noise, class_labels, dtype, augment_labels, model_kwargs)
        return c_skip * x + c_out * F_x

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt()
                - self.beta_min) / self.beta_d


class VEPrecond(_Precond):
    """Variance-exploding (NCSN++ / VE-SDE) preconditioning, EDM Table 1:
    c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma/2)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, sigma_min: float = 0.02, sigma_max: float = 100,
                 model_type: str = "SongUNet", sigma_data: float = 0.5, **model_kwargs):
        super().__init__()
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                                label_dim=label_dim, use_fp16=bool(use_fp16),
                                sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                                model_type=model_type, sigma_data=float(sigma_data), **model_kwargs)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = bool(use_fp16)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)  # not used by the preconditioning; for DSM weighting
        self.model = _build_model(model_type, img_resolution, img_channels, label_dim, model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None,
                augment_labels: Optional[torch.Tensor] = None, force_fp32: bool = False, *,
                class_labels: Optional[torch.Tensor] = None, **model_kwargs) -> torch.Tensor:
        x, sigma, class_labels = self._prepare(x, sigma, labels_of(cond, class_labels))
        dtype = self._dtype(x, force_fp32)
        c_skip = 1
        c_out = sigma
        c_in = 1
        c_noise = (0.5 * sigma).log()
        F_x = self._run(c_in * x, c_noise, class_labels, dtype, augment_labels, model_kwargs)
        return c_skip * x + c_out * F_x


PRECOND_CLASSES = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond}
