"""What one distillation step computes, independent of the training loop.

A *method* turns three networks into two scalar losses (ALGORITHMS.md sections 1-4):

- ``generator_loss``: the one-step generator ``x_g = G(z) = D_theta(sigma_init z; sigma_init)``
  is noised once, ``x_t = x_g + sigma eps`` with the SiD generator-step schedule, the same
  ``x_t`` goes to the frozen teacher and to the fake-score network, and the method's loss
  (SiD, SIM, DMD, ...) compares ``x_g``, ``D_teacher(x_t)`` and ``D_fake(x_t)``;
- ``fake_loss``: the denoising score-matching (DSM) step that keeps the fake network fitted
  to the current generator distribution.

Everything random enters as an explicit tensor (``draw_*`` make them from a
``torch.Generator``), so a hand-written reference step can be fed the very same noise.
A new method subclasses :class:`DistillMethod`, implements :meth:`loss` and registers itself
with :func:`register_method`; that is the whole contract.

Methods that need more than (G, teacher, fake network, noise) -- real data, the generator's EMA,
the raw (un-wrapped) generator module -- declare it in :attr:`DistillMethod.needs`; the loop then
hands them a :class:`MethodContext` once, through :meth:`DistillMethod.bind`, before training.
A method that does not use the fake-score network sets ``uses_fake = False`` and the loop skips
the fake (DSM) phase.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch

from ..losses import dsm_loss
from ..ops.reference import nan_sample_mask

_REGISTRY: dict[str, type["DistillMethod"]] = {}


def register_method(name: str):
    """Class decorator: make a method available as ``method.name=<name>``."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str, cfg=None, **kwargs) -> "DistillMethod":
    """Instantiate a registered method from a :class:`MethodConfig` (or its defaults)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    if cfg is None:
        from ..engine.config import MethodConfig

        cfg = MethodConfig(name=name)
    return _REGISTRY[name](cfg, **kwargs)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def karras_sigma(u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """SiD's generator-step sigma: ``(smax^(1/rho) + (1-u) (smin^(1/rho) - smax^(1/rho)))^rho``."""
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (a + (1.0 - u) * (b - a)) ** rho


@dataclass
class GeneratorNoise:
    z: torch.Tensor  # (B, *shape) latent
    sigma: torch.Tensor  # (B,) noise level of x_t
    eps: torch.Tensor  # (B, *shape) noise of x_t
    labels: Optional[torch.Tensor]  # (B, label_dim) one-hot or None


@dataclass
class FakeNoise:
    z: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    labels: Optional[torch.Tensor]


@dataclass
class MethodContext:
    """What the loop gives a method that declares :attr:`DistillMethod.needs` (once, via ``bind``).

    ``data`` is ``None`` or a callable ``data(n, generator) -> (x, one-hot labels or None)`` on
    the CPU (real data: ``cfg.data``, or the analytic teacher's exact samples); ``data_generator``
    is the CPU generator to draw it with (checkpointed by the loop, so resume is exact).
    ``net`` is the raw generator module (not DDP-wrapped, not compiled): use it for frozen
    applications through ``torch.func.functional_call``. ``ema`` is the generator's EMA module,
    updated in place by the loop.
    """

    teacher: object
    net: torch.nn.Module
    ema: Optional[torch.nn.Module]
    data: Optional[Callable]
    data_generator: Optional[torch.Generator]
    shape: tuple
    label_dim: int
    device: torch.device
    seed: int = 0
    progress: bool = False


class DistillMethod:
    """Base class: shared generator / noise / DSM pieces; subclasses define :meth:`loss`."""

    name: ClassVar[str] = "base"
    #: SiD and SIM back-propagate through the teacher and fake network into x_g (their
    #: parameters frozen); DMD evaluates them without gradient.
    scores_need_grad: ClassVar[bool] = True
    #: what the method needs from the loop besides the networks: a subset of
    #: {"data", "ema", "net"}; non-empty means the loop calls :meth:`bind` with a MethodContext.
    needs: ClassVar[frozenset] = frozenset()
    #: False: the method does not use the fake-score network (the loop skips the DSM phase).
    uses_fake: ClassVar[bool] = True

    def __init__(self, cfg, backend: str = "auto"):
        self.cfg = cfg
        self.backend = backend
        self.ctx: Optional[MethodContext] = None
        #: zero-argument callable returning the autocast context for network forwards
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def bind(self, ctx: MethodContext) -> None:
        """Receive the loop's context (called once, before the first step, when ``needs`` is set)."""
        self.ctx = ctx

    def log_terms(self) -> dict:
        """Extra scalars for the metrics log (e.g. the value of each loss term of the last step)."""
        return {}

    # ----------------------------------------------------------------- the one thing to write
    def loss(self, y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        """Scalar generator loss (``loss_scale * mean_b l_b``) from x_g, D_teacher(x_t), D_fake(x_t)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------- noise drawing
    def _labels(self, n: int, label_dim: int, gen: torch.Generator, device) -> Optional[torch.Tensor]:
        if label_dim <= 0:
            return None
        idx = torch.randint(0, label_dim, (n,), generator=gen, device=device)
        return torch.nn.functional.one_hot(idx, label_dim).float()

    def draw_generator_noise(self, n, shape, label_dim, gen: torch.Generator, device) -> GeneratorNoise:
        c = self.cfg
        z = torch.randn((n, *shape), generator=gen, device=device)
        labels = self._labels(n, label_dim, gen, device)
        u = torch.rand((n,), generator=gen, device=device) * (c.t_max / 1000.0)
        sigma = karras_sigma(u, c.sigma_min, c.sigma_max, c.rho)
        eps = torch.randn((n, *shape), generator=gen, device=device)
        return GeneratorNoise(z, sigma, eps, labels)

    def draw_fake_noise(self, n, shape, label_dim, gen: torch.Generator, device) -> FakeNoise:
        c = self.cfg
        z = torch.randn((n, *shape), generator=gen, device=device)
        labels = self._labels(n, label_dim, gen, device)
        sigma = (torch.randn((n,), generator=gen, device=device) * c.fake_p_std + c.fake_p_mean).exp()
        noise = torch.randn((n, *shape), generator=gen, device=device)
        return FakeNoise(z, sigma, noise, labels)

    # --------------------------------------------------------------------- shared pieces
    def generate(self, G, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One-step generation ``D_theta(sigma_init z; sigma_init, c)`` in float32."""
        s = self.cfg.sigma_init
        sigma = torch.full((z.shape[0],), s, dtype=torch.float32, device=z.device)
        with self.autocast():
            x = G(z * s, sigma, labels)
        return x.float()

    def _scores(self, teacher, fake, x_t, sigma, labels):
        with self.autocast():
            y_real = teacher(x_t, sigma, labels)
            y_fake = fake(x_t, sigma, labels)
        return y_real.float(), y_fake.float()

    def scores_at_noised(self, teacher, fake, x_g: torch.Tensor, noise: "GeneratorNoise"):
        """Teacher and fake denoisings of the one shared ``x_t = x_g + sigma eps``: through x_t
        into x_g when the method back-propagates through the scores, else without gradient."""
        x_t = x_g + _bcast(noise.sigma, x_g) * noise.eps
        if self.scores_need_grad:
            return self._scores(teacher, fake, x_t, noise.sigma, noise.labels)
        with torch.no_grad():
            return self._scores(teacher, fake, x_t.detach(), noise.sigma, noise.labels)

    def generator_loss(self, G, teacher, fake, noise: GeneratorNoise):
        """Generator-step loss. Returns ``(loss, nan_samples)``: the scalar loss and the number of
        samples with a NaN in x_g, D_teacher(x_t) or D_fake(x_t) (they contribute zero loss).

        The caller freezes the teacher's and fake network's parameters (requires_grad False);
        x_t is not detached, so gradients reach x_g through both score networks.
        """
        x_g = self.generate(G, noise.z, noise.labels)
        y_real, y_fake = self.scores_at_noised(teacher, fake, x_g, noise)
        with torch.no_grad():
            nan = nan_sample_mask(x_g, y_real, y_fake).sum()
        return self.loss(x_g, y_real, y_fake), nan

    def fake_samples(self, G, noise: FakeNoise) -> torch.Tensor:
        """The generator samples the fake network is fitted to (called without gradient): one step."""
        return self.generate(G, noise.z, noise.labels)

    def fake_loss(self, G, fake, noise: FakeNoise):
        """DSM loss of the fake network on detached generator samples. Returns ``(loss, nan_samples)``."""
        with torch.no_grad():
            x_g = self.fake_samples(G, noise)
        x_n = x_g + _bcast(noise.sigma, x_g) * noise.noise
        with self.autocast():
            pred = fake(x_n, noise.sigma, noise.labels)
        loss = dsm_loss(
            pred.float(), x_g, noise.sigma, sigma_data=self.sigma_data,
            loss_scale=self.cfg.fake_loss_scale, backend=self.backend,
        )
        with torch.no_grad():
            nan = nan_sample_mask(x_g, pred).sum()
        return loss, nan

    @property
    def sigma_data(self) -> float:
        return float(getattr(self, "_sigma_data", 0.5))

    @sigma_data.setter
    def sigma_data(self, v: float) -> None:
        self._sigma_data = float(v)
