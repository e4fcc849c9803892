"""What one distillation step computes, independent of the training loop.

A *method* turns three networks into two scalar losses (docs/algorithms.md sections 1-4):

- ``generator_loss``: the one-step generator ``x_g = G(z) = D_theta(sigma_init z; sigma_init)``
  is noised once, ``x_t = x_g + sigma eps`` with the SiD generator-step schedule, the same
  ``x_t`` goes to the frozen teacher and to the fake-score network, and the method's loss
  (SiD, SIM, DMD, ...) compares ``x_g``, ``D_teacher(x_t)`` and ``D_fake(x_t)``;
- ``fake_loss``: the denoising score-matching (DSM) step that keeps the fake network fitted
  to the current generator distribution.

Everything random enters as an explicit tensor (``draw_*`` make them from a
``torch.Generator``), so a hand-written reference step can be fed the very same noise.

A new method is one module: a config dataclass deriving from :class:`MethodConfig` with the
method's own options, a subclass of :class:`DistillMethod` implementing :meth:`loss`, and
``@register_method("name", config=ThatConfig)``. Methods that need more than (G, teacher, fake
network, noise) -- real data, the generator's EMA, the raw generator module -- declare it in
:attr:`DistillMethod.needs` and get a :class:`MethodContext` through :meth:`DistillMethod.bind`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Optional

import torch

from ..conditioning import Conditioning
from ..losses import dsm_loss
from ..ops.reference import nonfinite_sample_mask

BACKENDS = ("auto", "reference", "cpp", "triton", "cuda")


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def check_choice(name: str, v, options) -> None:
    check(v in options, f"{name} must be one of {list(options)}, got {v!r}")


def check_positive(name: str, v, allow_zero: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    check(ok, f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


@dataclass
class MethodConfig:
    """What every method shares: the generator input, the noise schedules, loss scales, the backend
    (official SiD defaults). Each method's own options live in its subclass."""

    name: str = "sid"  # the method (any registered one): sid | sim | dmd | sign | ign
    sigma_init: float = 2.5  # generator input noise level
    t_max: float = 800.0  # generator-step u ~ U(0, t_max/1000)
    sigma_min: float = 0.002  # generator-step noise range (and SIGN's flow grid)
    sigma_max: float = 80.0
    rho: float = 7.0  # Karras schedule exponent
    fake_p_mean: float = -1.2  # fake-step ln sigma ~ N(p_mean, p_std^2)
    fake_p_std: float = 1.2
    generator_loss_scale: float = 100.0  # multiplies the generator loss
    fake_loss_scale: float = 1.0  # multiplies the fake network's DSM loss
    backend: str = "auto"  # loss backend: auto | reference | cpp | triton | cuda

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an out-of-range value (subclasses add their own checks)."""
        check_choice("method.backend", self.backend, BACKENDS)
        for k in ("sigma_init", "sigma_min", "sigma_max", "rho", "fake_p_std", "generator_loss_scale", "fake_loss_scale"):
            check_positive(f"method.{k}", getattr(self, k))
        check(0 < self.t_max <= 1000, f"method.t_max must be in (0, 1000], got {self.t_max!r}")
        check(self.sigma_min < self.sigma_max, f"method.sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        check(math.isfinite(self.fake_p_mean), "method.fake_p_mean must be finite")


_REGISTRY: dict[str, type["DistillMethod"]] = {}


def register_method(name: str, config: type = MethodConfig):
    """Class decorator: make a method available as ``method.name=<name>`` with its config class."""
    if not (isinstance(config, type) and issubclass(config, MethodConfig)):
        raise TypeError(f"the config of method {name!r} must derive from MethodConfig")

    def deco(cls):
        cls.name = name
        cls.config_class = config
        _REGISTRY[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type["DistillMethod"]:
    if name not in _REGISTRY:
        raise ConfigError(f"method.name: unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]


def method_config(name: str = "sid", **options) -> MethodConfig:
    """The config of method ``name`` with ``options`` set (its defaults otherwise)."""
    cls = method_class(name).config_class
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(sorted(valid))}")
    return cls(**{**options, "name": name})


def get_method(name: str, cfg: Optional[MethodConfig] = None, **kwargs) -> "DistillMethod":
    """Instantiate a registered method from its config (default: the method's defaults)."""
    cls = method_class(name)
    cfg = method_config(name) if cfg is None else cfg
    if not isinstance(cfg, cls.config_class):
        raise ConfigError(f"method {name!r} needs a {cls.config_class.__name__}, got {type(cfg).__name__}")
    return cls(cfg, **kwargs)


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
    cond: Optional[Conditioning]  # per-sample conditioning, or None


@dataclass
class FakeNoise:
    z: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    cond: Optional[Conditioning]


@dataclass
class MethodContext:
    """What the loop gives a method that declares :attr:`DistillMethod.needs` (once, via ``bind``).

    ``data`` is ``None`` or a callable ``data(n, generator) -> (x, Conditioning or None)`` on
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

    config_class: ClassVar[type] = MethodConfig

    def __init__(self, cfg: MethodConfig, backend: str = "auto", *, sigma_data: float = 0.5,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        """``sigma_data``: the teacher's data standard deviation (DSM weighting); ``autocast``: a
        zero-argument callable giving the mixed-precision context of the network forwards."""
        self.cfg = cfg
        self.backend = backend
        self.sigma_data = float(sigma_data)
        self.autocast = autocast
        self.ctx: Optional[MethodContext] = None

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
    def _cond(self, n: int, label_dim: int, gen: torch.Generator, device) -> Optional[Conditioning]:
        """Uniformly random class labels for a training batch (None for an unconditional teacher)."""
        if label_dim <= 0:
            return None
        idx = torch.randint(0, label_dim, (n,), generator=gen, device=device)
        return Conditioning(labels=torch.nn.functional.one_hot(idx, label_dim).float())

    def draw_generator_noise(self, n, shape, label_dim, gen: torch.Generator, device) -> GeneratorNoise:
        c = self.cfg
        z = torch.randn((n, *shape), generator=gen, device=device)
        cond = self._cond(n, label_dim, gen, device)
        u = torch.rand((n,), generator=gen, device=device) * (c.t_max / 1000.0)
        sigma = karras_sigma(u, c.sigma_min, c.sigma_max, c.rho)
        eps = torch.randn((n, *shape), generator=gen, device=device)
        return GeneratorNoise(z, sigma, eps, cond)

    def draw_fake_noise(self, n, shape, label_dim, gen: torch.Generator, device) -> FakeNoise:
        c = self.cfg
        z = torch.randn((n, *shape), generator=gen, device=device)
        cond = self._cond(n, label_dim, gen, device)
        sigma = (torch.randn((n,), generator=gen, device=device) * c.fake_p_std + c.fake_p_mean).exp()
        noise = torch.randn((n, *shape), generator=gen, device=device)
        return FakeNoise(z, sigma, noise, cond)

    # --------------------------------------------------------------------- shared pieces
    def generate(self, G, z: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        """One-step generation ``D_theta(sigma_init z; sigma_init, c)`` in float32."""
        s = self.cfg.sigma_init
        sigma = torch.full((z.shape[0],), s, dtype=torch.float32, device=z.device)
        with self.autocast():
            x = G(z * s, sigma, cond)
        return x.float()

    def _scores(self, teacher, fake, x_t, sigma, cond):
        with self.autocast():
            y_real = teacher(x_t, sigma, cond)
            y_fake = fake(x_t, sigma, cond)
        return y_real.float(), y_fake.float()

    def scores_at_noised(self, teacher, fake, x_g: torch.Tensor, noise: "GeneratorNoise"):
        """Teacher and fake denoisings of the one shared ``x_t = x_g + sigma eps``: through x_t
        into x_g when the method back-propagates through the scores, else without gradient."""
        x_t = x_g + _bcast(noise.sigma, x_g) * noise.eps
        if self.scores_need_grad:
            return self._scores(teacher, fake, x_t, noise.sigma, noise.cond)
        with torch.no_grad():
            return self._scores(teacher, fake, x_t.detach(), noise.sigma, noise.cond)

    @property
    def reuses_samples(self) -> bool:
        """Whether the fake step fits the generator step's own samples (``method.reuse_samples``;
        only methods whose fake step trains on one-step samples have the option)."""
        return bool(getattr(self.cfg, "reuse_samples", False))

    def generator_loss(self, G, teacher, fake, noise: GeneratorNoise):
        """Generator-step loss. Returns ``(loss, nan_samples)``: the scalar loss and the number of
        samples with a non-finite value in x_g, D_teacher(x_t) or D_fake(x_t) (they contribute zero loss).

        The caller freezes the teacher's and fake network's parameters (requires_grad False);
        x_t is not detached, so gradients reach x_g through both score networks.
        """
        loss, nan, _ = self.generator_loss_and_samples(G, teacher, fake, noise)
        return loss, nan

    def generator_loss_and_samples(self, G, teacher, fake, noise: GeneratorNoise):
        """:meth:`generator_loss` and the detached samples ``x_g`` it was computed on (for
        :meth:`fake_loss` when the method reuses them)."""
        x_g = self.generate(G, noise.z, noise.cond)
        y_real, y_fake = self.scores_at_noised(teacher, fake, x_g, noise)
        with torch.no_grad():
            nan = nonfinite_sample_mask(x_g, y_real, y_fake).sum()
        return self.loss(x_g, y_real, y_fake), nan, x_g.detach()

    def fake_samples(self, G, noise: FakeNoise) -> torch.Tensor:
        """The generator samples the fake network is fitted to (called without gradient): one step."""
        return self.generate(G, noise.z, noise.cond)

    def fake_loss(self, G, fake, noise: FakeNoise, samples: Optional[torch.Tensor] = None):
        """DSM loss of the fake network on detached generator samples: ``samples`` when given (the
        generator step's, drawn with ``noise.cond``), else fresh ones. Returns ``(loss, nan_samples)``."""
        if samples is not None:
            x_g = samples
        else:
            with torch.no_grad():
                x_g = self.fake_samples(G, noise)
        x_n = x_g + _bcast(noise.sigma, x_g) * noise.noise
        with self.autocast():
            pred = fake(x_n, noise.sigma, noise.cond)
        loss = dsm_loss(
            pred.float(), x_g, noise.sigma, sigma_data=self.sigma_data,
            loss_scale=self.cfg.fake_loss_scale, backend=self.backend,
        )
        with torch.no_grad():
            nan = nonfinite_sample_mask(x_g, pred).sum()
        return loss, nan
