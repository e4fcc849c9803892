"""Analytic teachers: Gaussian mixtures with their exact denoiser.

For data `x0 ~ sum_k pi_k N(mu_k, Sigma_k)` noised as `x = x0 + sigma * eps`, the noisy density
is `sum_k pi_k N(mu_k, Sigma_k + sigma^2 I)` and the ideal denoiser is the posterior mean

    D(x, sigma) = E[x0 | x] = sum_k r_k(x) * (mu_k + Sigma_k (Sigma_k + sigma^2 I)^-1 (x - mu_k)),

with responsibilities `r_k` proportional to `pi_k N(x; mu_k, Sigma_k + sigma^2 I)` (computed with
logsumexp, so it stays finite at sigma = 0.002 or 80). Every covariance is stored by its
eigendecomposition `Sigma_k = U_k diag(lambda_k) U_k^T` (U_k = I for isotropic and diagonal
covariances), which makes the posterior cheap for any sigma. Arithmetic is float64 inside;
inputs and outputs keep the caller's dtype (float32 under the Denoiser protocol).

Data shape: a mixture lives in R^d with an arbitrary `data_shape` whose product is d.
- Vector data (2-D toys: `data_shape=(2,)`): `img_channels = d`, `img_resolution = 1`.
  Inputs may be given as (B, d) or any (B, ...) whose trailing size is d, e.g. (B, d, 1, 1).
- Image-shaped mixtures (`data_shape=(C, R, R)`): `img_channels = C`, `img_resolution = R`.
`data_shape` is the authoritative attribute; `fastdistill.sampling` reads it when present.

Class-conditional mixtures: pass `component_labels` (one class index per component); then
`label_dim = num_classes`, and with one-hot `class_labels` the posterior runs over the
components of that class only (the mixture of that class's components, renormalised).
Without class labels the full mixture is used.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..conditioning import labels_of
from ..data.toys import grid_means, mixture_draws, ring_means

__all__ = [
    "GaussianMixtureTeacher",
    "eight_gaussians",
    "ring_of_gaussians",
    "grid_of_gaussians",
    "single_gaussian",
]

_LOG2PI = math.log(2.0 * math.pi)


def _as_tensor(v, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(v, dtype=torch.float64)
    except Exception as exc:  # pragma: no cover - message only
        raise TypeError(f"{name} must be array-like of numbers, got {type(v).__name__}") from exc
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t.detach().clone().cpu()


class GaussianMixtureTeacher(nn.Module):
    """Exact denoiser of a Gaussian mixture; satisfies the `Denoiser` protocol.

    Args:
        means: (K, d) component means (or (K, *data_shape)).
        covs: one of
            - None: isotropic with standard deviation `stds`;
            - (K,) or scalar: isotropic *variances*;
            - (K, d): diagonal variances;
            - (K, d, d) or (1, d, d) (shared): full covariance matrices (symmetric PSD).
            A 2-D array is always read as diagonal variances, never as one shared matrix.
        stds: isotropic standard deviations, scalar or (K,); alternative to `covs`.
        weights: (K,) mixture weights (normalised here; default uniform).
        data_shape: shape of one sample (default `(d,)`).
        sigma_data: the data std used by EDM-style code; computed from the mixture when None
            (root-mean-square deviation from the mixture mean, per coordinate).
        component_labels: (K,) integer class of each component for a class-conditional
            teacher; `num_classes` defaults to max + 1.
    """

    def __init__(
        self,
        means,
        covs=None,
        *,
        stds=None,
        weights=None,
        data_shape: Optional[Sequence[int]] = None,
        sigma_data: Optional[float] = None,
        component_labels=None,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        mu = _as_tensor(means, "means")
        if mu.ndim < 2 or mu.shape[0] == 0:
            raise ValueError(f"means must have shape (K, d) with K >= 1, got {tuple(mu.shape)}")
        K = mu.shape[0]
        if data_shape is None:
            data_shape = tuple(mu.shape[1:])
        data_shape = tuple(int(s) for s in data_shape)
        d = int(math.prod(data_shape))
        if mu[0].numel() != d:
            raise ValueError(f"means have {mu[0].numel()} coordinates per component but data_shape {data_shape} has {d}")
        mu = mu.reshape(K, d)

        if covs is not None and stds is not None:
            raise ValueError("give either covs or stds, not both")
        U = None
        if covs is None:
            if stds is None:
                raise ValueError("give the component spread as covs (variances/matrices) or stds")
            s = _as_tensor(stds, "stds")
            if s.ndim == 0:
                s = s.expand(K)
            if s.shape != (K,):
                raise ValueError(f"stds must be a scalar or have shape ({K},), got {tuple(s.shape)}")
            if (s < 0).any():
                raise ValueError("stds must be non-negative")
            lam = (s**2)[:, None].expand(K, d).clone()
        else:
            c = _as_tensor(covs, "covs")
            if c.ndim == 0:
                c = c.expand(K)
            if c.shape == (K,):
                lam = c[:, None].expand(K, d).clone()
            elif c.ndim == 2 and c.shape == (K, d):
                lam = c.clone()
            elif c.ndim == 3 and c.shape in ((1, d, d), (K, d, d)):
                c = c.expand(K, d, d)
                if not torch.allclose(c, c.transpose(-1, -2), atol=1e-10, rtol=1e-8):
                    raise ValueError("full covariance matrices must be symmetric")
                lam, U = torch.linalg.eigh(c)
                if (lam < -1e-10 * lam.abs().amax().clamp_min(1.0)).any():
                    raise ValueError("covariance matrices must be positive semi-definite")
            else:
                raise ValueError(
                    f"covs must be a scalar, ({K},) variances, ({K}, {d}) diagonal variances or "
                    f"({K}, {d}, {d}) / (1, {d}, {d}) matrices; got {tuple(c.shape)}"
                )
            if (lam < -1e-10).any():
                raise ValueError("variances must be non-negative")
            lam = lam.clamp_min(0.0)

        if weights is None:
            w = torch.full((K,), 1.0 / K, dtype=torch.float64)
        else:
            w = _as_tensor(weights, "weights").reshape(-1)
            if w.shape != (K,):
                raise ValueError(f"weights must have shape ({K},), got {tuple(w.shape)}")
            if (w < 0).any() or w.sum() <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
            w = w / w.sum()

        if component_labels is not None:
            lab = torch.as_tensor(component_labels, dtype=torch.long).reshape(-1)
            if lab.shape != (K,):
                raise ValueError(f"component_labels must have shape ({K},), got {tuple(lab.shape)}")
            if (lab < 0).any():
                raise ValueError("component_labels must be non-negative class indices")
            n_cls = int(num_classes) if num_classes is not None else int(lab.max()) + 1
            if int(lab.max()) >= n_cls:
                raise ValueError(f"component label {int(lab.max())} >= num_classes {n_cls}")
            self.label_dim = n_cls
        else:
            if num_classes is not None:
                raise ValueError("num_classes needs component_labels")
            lab = None
            self.label_dim = 0

        self.register_buffer("means", mu)
        self.register_buffer("eigvals", lam)  # (K, d)
        self.register_buffer("eigvecs", U)  # (K, d, d) or None (axis-aligned)
        self.register_buffer("log_weights", torch.log(w))
        self.register_buffer("component_labels", lab)
        self.data_shape = data_shape
        self.dim = d
        if len(data_shape) == 3:
            self.img_channels, self.img_resolution = data_shape[0], data_shape[-1]
        else:
            self.img_channels, self.img_resolution = d, 1
        if sigma_data is None:
            sigma_data = math.sqrt(float(self.variance_per_dim()))
        self.sigma_data = float(sigma_data)

    # ------------------------------------------------------------------ statistics
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def variance_per_dim(self) -> torch.Tensor:
        """E||x0 - E x0||^2 / d for the whole mixture."""
        w = self.weights
        centred = ((self.means - self.mean()) ** 2).sum(1)
        return (w * (centred + self.eigvals.sum(1))).sum() / self.dim

    # ------------------------------------------------------------------ internals
    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError("x must be a floating-point tensor")
        if x.ndim < 1 or x.numel() != x.shape[0] * self.dim or (x.ndim == 1 and self.dim != 1):
            raise ValueError(
                f"x must have shape (B, *data_shape) with data_shape {self.data_shape} "
                f"({self.dim} values per sample); got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.dim)

    def _sigma(self, sigma, B: int, device) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64, device=device)
        if s.numel() == 1:
            s = s.reshape(1).expand(B)
        elif s.numel() == B:
            s = s.reshape(B)
        else:
            raise ValueError(f"sigma must be a scalar or have B={B} entries, got shape {tuple(s.shape)}")
        if not torch.isfinite(s).all() or (s < 0).any():
            raise ValueError("sigma must be finite and non-negative")
        return s

    def _log_prior(self, class_labels, B: int, device) -> torch.Tensor:
        lw = self.log_weights.to(device)[None].expand(B, -1)
        if class_labels is None or self.label_dim == 0:
            if class_labels is not None and self.label_dim == 0:
                raise ValueError("this teacher is unconditional (label_dim 0); pass class_labels=None")
            return lw
        cl = torch.as_tensor(class_labels, device=device)
        if cl.shape != (B, self.label_dim):
            raise ValueError(f"class_labels must have shape (B, {self.label_dim}) = ({B}, {self.label_dim}), got {tuple(cl.shape)}")
        cl = cl.to(torch.float64)
        # weight of component k for sample b: class_labels[b, label_k] (one-hot selects the class)
        sel = cl[:, self.component_labels.to(device)]  # (B, K)
        if (sel.sum(1) <= 0).any():
            raise ValueError("class_labels select no component (a class without components, or an all-zero row)")
        return lw + torch.log(sel)

    def _posterior(self, x, sigma, class_labels):
        """Per-component quantities in float64: log-joint (B, K) and projected residuals."""
        xf = self._flatten(x).to(torch.float64)
        B = xf.shape[0]
        s2 = self._sigma(sigma, B, xf.device) ** 2  # (B,)
        mu = self.means.to(xf.device)
        lam = self.eigvals.to(xf.device)
        diff = xf[:, None, :] - mu[None]  # (B, K, d)
        if self.eigvecs is not None:
            z = torch.einsum("bkd,kde->bke", diff, self.eigvecs.to(xf.device))
        else:
            z = diff
        var = lam[None] + s2[:, None, None]  # (B, K, d)
        if (var <= 0).any():
            raise ValueError("sigma = 0 with a degenerate (zero-variance) component: density undefined")
        logdet = torch.log(var).sum(-1)
        quad = (z**2 / var).sum(-1)
        log_joint = self._log_prior(class_labels, B, xf.device) - 0.5 * (quad + logdet + self.dim * _LOG2PI)
        return xf, z, var, log_joint

    # ------------------------------------------------------------------ public API
    def forward(self, x: torch.Tensor, sigma, cond=None, *, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Exact posterior mean E[x0 | x0 + sigma eps = x], same shape and dtype as x."""
        class_labels = labels_of(cond, class_labels)
        xf, z, var, log_joint = self._posterior(x, sigma, class_labels)
        r = torch.softmax(log_joint, dim=1)  # (B, K), stable
        lam = self.eigvals.to(xf.device)
        shrunk = z * (lam[None] / var)  # Sigma (Sigma + s^2)^-1 (x - mu) in the eigenbasis
        if self.eigvecs is not None:
            shrunk = torch.einsum("bke,kde->bkd", shrunk, self.eigvecs.to(xf.device))
        cond_means = self.means.to(xf.device)[None] + shrunk  # (B, K, d)
        out = (r[:, :, None] * cond_means).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma=0.0, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p_sigma(x) of the noised mixture, (B,), float64; differentiable in x."""
        _, _, _, log_joint = self._posterior(x, sigma, class_labels)
        return torch.logsumexp(log_joint, dim=1)

    def score(self, x: torch.Tensor, sigma, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x) - x) / sigma^2 (Tweedie)."""
        s = self._sigma(sigma, x.shape[0], x.device).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.forward(x, sigma, class_labels) - x) / s**2

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        class_labels: Optional[torch.Tensor] = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Exact samples x0 of the mixture, (n, *data_shape), on the buffers' device.

        With class_labels (n, label_dim) one-hot, each sample comes from its class's components.
        """
        n = int(n)
        if n < 0:
            raise ValueError("n must be non-negative")
        dev = self.means.device
        if n == 0:
            return torch.zeros((0, *self.data_shape), dtype=dtype, device=dev)
        logits = self._log_prior(class_labels, n, dev)
        probs = torch.softmax(logits, dim=1)
        k, eps = mixture_draws(probs, self.dim, generator)
        k = k.to(dev)
        scaled = eps.to(dev) * self.eigvals[k].sqrt()
        if self.eigvecs is not None:
            scaled = torch.einsum("bkd,bd->bk", self.eigvecs[k], scaled)  # U @ (sqrt(lam) * eps)
        x = self.means[k] + scaled
        return x.reshape(n, *self.data_shape).to(dtype)

    def extra_repr(self) -> str:
        kind = "full" if self.eigvecs is not None else "axis-aligned"
        return (
            f"components={self.num_components}, data_shape={self.data_shape}, covariance={kind}, "
            f"sigma_data={self.sigma_data:.4g}, label_dim={self.label_dim}"
        )


# ---------------------------------------------------------------------- 2-D toy constructors
def ring_of_gaussians(n_modes: int = 8, radius: float = 1.0, std: float = 0.05, **kw) -> GaussianMixtureTeacher:
    """`n_modes` isotropic Gaussians evenly spaced on a circle (first mode at angle 0)."""
    return GaussianMixtureTeacher(ring_means(n_modes, radius), stds=std, **kw)


def eight_gaussians(radius: float = 1.0, std: float = 0.05, **kw) -> GaussianMixtureTeacher:
    """The classic 8-Gaussian ring in 2-D (radius 1, std 0.05 by default; sigma_data ~ 0.71).

    The same distribution as `fastdistill.data.load_dataset("8gaussians")`.
    """
    return ring_of_gaussians(8, radius, std, **kw)


def grid_of_gaussians(n_per_side: int = 5, spacing: float = 0.5, std: float = 0.05, **kw) -> GaussianMixtureTeacher:
    """An n x n grid of isotropic Gaussians centred on 0 (the "25 Gaussians" toy for n=5)."""
    return GaussianMixtureTeacher(grid_means(n_per_side, spacing), stds=std, **kw)


def single_gaussian(mean, cov, **kw) -> GaussianMixtureTeacher:
    """One Gaussian N(mean, cov) with cov a scalar variance, (d,) diagonal or (d, d) matrix."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    d = mean.shape[1]
    if cov.ndim == 0:
        cov = cov.reshape(1)
    elif cov.ndim == 1:
        if cov.shape != (d,):
            raise ValueError(f"diagonal cov must have shape ({d},), got {tuple(cov.shape)}")
        cov = cov[None]
    elif cov.ndim == 2:
        if cov.shape != (d, d):
            raise ValueError(f"cov matrix must have shape ({d}, {d}), got {tuple(cov.shape)}")
        cov = cov[None]
    return GaussianMixtureTeacher(mean, cov, **kw)


#: analytic teachers by name; the mixtures carry the names of the datasets they equal
#: (``fastdistill.data.load_dataset``), ``ring8`` and ``grid25`` are older spellings
ANALYTIC_TEACHERS = {
    "8gaussians": eight_gaussians,
    "25gaussians": lambda: grid_of_gaussians(5),
    "gaussian": lambda: single_gaussian([0.0, 0.0], [[1.0, 0.6], [0.6, 0.5]]),
}
_ALIASES = {"ring8": "8gaussians", "grid25": "25gaussians"}


def analytic_teacher(name: str) -> GaussianMixtureTeacher:
    """An exact analytic teacher by name: ``8gaussians``, ``25gaussians``, ``gaussian`` (a
    correlated 2-D Gaussian), or ``ringN`` (N Gaussians on the unit circle, e.g. ring64)."""
    key = _ALIASES.get(name, name)
    if key in ANALYTIC_TEACHERS:
        return ANALYTIC_TEACHERS[key]()
    if name.startswith("ring") and name[4:].isdigit() and int(name[4:]) >= 1:
        return ring_of_gaussians(int(name[4:]))
    raise ValueError(f"unknown analytic teacher {name!r}; available: {', '.join(ANALYTIC_TEACHERS)}, ringN (e.g. ring64)")
