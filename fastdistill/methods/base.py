"""What one distillation step computes, independent of the training loop.

A *method* turns three networks into two scalar losses (docs/algorithms.md sections 1-4):

- ``generator_loss``: the one-step generator ``x_g = G(z) = D_theta(sigma_init z; sigma_init)``
  (or one application of a few-step generator, :class:`FewStepConfig`) is noised once,
  ``x_t = x_g + sigma eps`` with the SiD generator-step schedule, the same ``x_t`` goes to the
  frozen teacher and to the fake-score network, and the method's loss (SiD, SIM, DMD, ...)
  compares ``x_g``, ``D_teacher(x_t)`` and ``D_fake(x_t)``;
- ``fake_loss``: the denoising score-matching (DSM) step that keeps the fake network fitted
  to the current generator distribution.

Everything random enters as an explicit tensor (``draw_*`` make them from a
``torch.Generator``), so a hand-written reference step can be fed the very same noise.

A new method is one module: a config dataclass deriving from :class:`MethodConfig` with the
method's own options, a subclass of :class:`DistillMethod` implementing :meth:`loss`, and
``@register_method("name", config=ThatConfig)``. Methods that need more than (G, teacher, fake
network, noise) -- real data, the generator's EMA, the raw generator module -- declare it in
:attr:`DistillMethod.needs` and get a :class:`MethodContext` through :meth:`DistillMethod.bind`.
A method that trains a module of its own (a discriminator head) returns it from
:meth:`DistillMethod.modules` and puts its parameters in an update's :meth:`DistillMethod.param_groups`;
the loop moves, replicates, checkpoints and resumes it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Optional

import torch

from ..conditioning import Conditioning, ConditioningBank
from ..losses import dsm_loss
from ..ops.reference import nonfinite_sample_mask
from ..sampling import DEFAULT_SIGMA_END
from ..teachers.base import guided
from ..teachers.traits import TeacherTraits
from .checks import ConfigError, check, check_choice, check_positive
from .levels import EDMLevels, NoiseLevels, TeacherLevels

BACKENDS = ("auto", "reference", "cpp", "triton", "cuda")
NOISE_LEVELS = ("auto", "edm", "teacher")


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
    noise_levels: str = "auto"  # auto (teacher for latent pipeline teachers, else edm) | edm (the schedules above) | teacher (timesteps of the teacher's own discrete schedule, docs/algorithms.md section 9)
    t_lo: int = 20  # noise_levels=teacher: both steps draw timesteps uniformly from [t_lo, t_hi)
    t_hi: int = 980
    t_init: int = 625  # noise_levels=teacher: the generator's input timestep (sigma_init = sigma_t of it; 2.50 for SD)
    guidance_teacher: float = 1.0  # classifier-free guidance of the teacher in the generator loss (SiD-LSG kappa4; DMD2's guidance scale); 1 = none
    guidance_fake: float = 1.0  # guidance of the fake network in the generator loss (SiD-LSG kappa2 = kappa3)
    guidance_fake_train: float = 1.0  # guidance of the fake network in its own DSM step (SiD-LSG kappa1)
    uncond_fraction: float = 0.1  # share of the fake step's conditions replaced by the unconditional one when guidance_fake or guidance_fake_train is not 1 (SiD-LSG: 10%)

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an out-of-range value (subclasses add their own checks)."""
        check_choice("method.backend", self.backend, BACKENDS)
        check_choice("method.noise_levels", self.noise_levels, NOISE_LEVELS)
        for k in ("t_lo", "t_hi", "t_init"):
            v = getattr(self, k)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"method.{k} must be an integer >= 0, got {v!r}")
        check(self.t_lo < self.t_hi, f"method.t_lo ({self.t_lo}) must be below method.t_hi ({self.t_hi})")
        for k in ("guidance_teacher", "guidance_fake", "guidance_fake_train"):
            v = getattr(self, k)
            check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                  f"method.{k} must be a finite number, got {v!r}")
        check(isinstance(self.uncond_fraction, (int, float)) and 0 <= self.uncond_fraction < 1,
              f"method.uncond_fraction must be in [0, 1), got {self.uncond_fraction!r}")
        for k in ("sigma_init", "sigma_min", "sigma_max", "rho", "fake_p_std", "generator_loss_scale", "fake_loss_scale"):
            check_positive(f"method.{k}", getattr(self, k))
        check(0 < self.t_max <= 1000, f"method.t_max must be in (0, 1000], got {self.t_max!r}")
        check(self.sigma_min < self.sigma_max, f"method.sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        check(math.isfinite(self.fake_p_mean), "method.fake_p_mean must be finite")


@dataclass
class FewStepConfig(MethodConfig):
    """The generator of SiD, SIM and DMD: one step, or ``steps`` applications of a time-conditioned
    ``D_theta(x_k; sigma_k)``, ``x_1 = D(sigma_1 z; sigma_1)``, ``x_{k+1} = D(x_k + sigma_{k+1} eps; sigma_{k+1})``,
    trained by DMD2's backward simulation: each sample is one application, its input made by the
    current generator without gradient (docs/algorithms.md section 10)."""

    steps: int = 1  # generator applications: 1 = one-step; K > 1 = a few-step generator
    step_sigma_end: float = DEFAULT_SIGMA_END  # EDM noise levels: the last of the K levels, a Karras grid from sigma_init down to it (a teacher's levels: the timesteps of few_step_timesteps, DMD2's 999, 749, 499, 249 for t_init 999 and K 4)

    def validate(self) -> None:
        super().validate()
        check(isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1,
              f"method.steps must be an integer >= 1, got {self.steps!r}")
        check_positive("method.step_sigma_end", self.step_sigma_end)
        check(self.steps == 1 or self.step_sigma_end < self.sigma_init,
              f"method.step_sigma_end ({self.step_sigma_end}) must be below method.sigma_init ({self.sigma_init})")


def _check_guidance_input(cfg: MethodConfig, teacher: TeacherTraits) -> None:
    """A guidance-distilled teacher (FLUX.1-dev) takes its guidance as a network input: no
    two-pass guidance scales (docs/algorithms.md section 9)."""
    if not teacher.guidance_distilled:
        return
    scales = {k: getattr(cfg, k) for k in ("guidance_teacher", "guidance_fake", "guidance_fake_train")}
    given = [f"method.{k}={v}" for k, v in scales.items() if v != 1]
    check(not given, f"{', '.join(given)}: this {teacher.family} teacher is guidance-distilled (its "
                     f"guidance value, {teacher.embedded_guidance}, is an input of the network, "
                     f"in cond.extra['guidance']); it takes no two-pass guidance: set "
                     f"method.guidance_teacher=1 method.guidance_fake=1 method.guidance_fake_train=1")


def noise_levels(cfg: MethodConfig, teacher: TeacherTraits) -> NoiseLevels:
    """The levels both steps draw from (``method.noise_levels``; ``auto``: the teacher's own for
    latent pipeline teachers, else EDM's): :class:`TeacherLevels` on the teacher's schedule,
    discrete or flow matching. Also refuses guidance scales a guidance-distilled
    teacher cannot take."""
    _check_guidance_input(cfg, teacher)
    mode = cfg.noise_levels
    if mode == "auto":
        mode = "teacher" if teacher.latent else "edm"
    if mode == "edm":
        return EDMLevels(cfg)
    schedule = teacher.schedule
    check(schedule.num_timesteps is not None,
          "method.noise_levels=teacher needs a teacher with timesteps (a diffusers teacher); this one has none: "
          "use method.noise_levels=edm")
    T = schedule.num_timesteps
    if schedule.kind == "flow":
        check(1 <= cfg.t_lo and cfg.t_hi <= T,
              f"method.t_lo ({cfg.t_lo}) and method.t_hi ({cfg.t_hi}) must lie in [1, {T}] for a flow-matching "
              f"teacher (t = 0 is the clean sample)")
        check(0 < cfg.t_init < T,
              f"method.t_init={cfg.t_init}: a flow-matching teacher's generator input is at t = t_init / {T}, which "
              f"must be in (0, 1); t = 1 (pure noise) has sigma = inf, which the generator input sigma_init * z "
              f"cannot carry: use t_init < {T} (e.g. {T - 1})")
    else:
        check(cfg.t_hi <= T and cfg.t_init < T,
              f"method.t_hi ({cfg.t_hi}) and method.t_init ({cfg.t_init}) must lie in the teacher's {T} timesteps")
        sig = schedule.sigmas
        check(bool(torch.isfinite(sig[cfg.t_lo:cfg.t_hi]).all()) and bool(torch.isfinite(sig[cfg.t_init])),
              f"the teacher's schedule has non-finite noise levels in [{cfg.t_lo}, {cfg.t_hi}) or at t_init {cfg.t_init}")
    return TeacherLevels(cfg, schedule)


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


@dataclass
class GeneratorNoise:
    z: torch.Tensor  # (B, *shape) latent
    sigma: torch.Tensor  # (B,) noise level of x_t
    eps: torch.Tensor  # (B, *shape) noise of x_t
    cond: Optional[Conditioning]  # per-sample conditioning, or None
    chain_pos: Optional[torch.Tensor] = dataclasses.field(default=None, kw_only=True)  # (B,) multi-step generators: which application each sample is (0 = the first)
    chain_eps: Optional[torch.Tensor] = dataclasses.field(default=None, kw_only=True)  # (B, K - 1, *shape) the sampler's re-noising


@dataclass
class FakeNoise:
    z: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    cond: Optional[Conditioning]
    drop: Optional[torch.Tensor]  # (B,) bool or None: samples whose condition is replaced by the unconditional one
    chain_pos: Optional[torch.Tensor] = dataclasses.field(default=None, kw_only=True)  # as in GeneratorNoise
    chain_eps: Optional[torch.Tensor] = dataclasses.field(default=None, kw_only=True)


def chain_inputs(apply, z: torch.Tensor, cond: Optional[Conditioning], sigma_s: float, levels: list,
                 pos: torch.Tensor, eps: torch.Tensor, every_sample: bool = False) -> torch.Tensor:
    """Per sample, the input of application ``pos + 1`` of a multi-step sampler (without gradient).

    ``pos = 0``: ``sigma_s z``; ``pos = j >= 1``: ``x_j + levels[j-1] eps[:, j-1]`` with ``x_j`` the
    sampler's ``j``-th output, ``x_1 = apply(sigma_s z, c, 0)``,
    ``x_{k+1} = apply(x_k + levels[k-1] eps[:, k-1], c, k)``; ``apply(x, cond, k)`` is the
    student's application ``k`` (0-based) and ``eps`` is (B, len(levels), *shape). Only the samples
    that go further are evaluated, unless ``every_sample``: then every application runs on the whole
    batch (the same number of network calls on every rank, as sharded networks need).
    """
    x = z * sigma_s
    with torch.no_grad():
        for j, lv in enumerate(levels):
            if every_sample:
                y = apply(x, cond, j) + lv * eps[:, j]
                x = torch.where(_bcast(pos > j, x), y.to(x.dtype), x)
                continue
            idx = (pos > j).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            y = apply(x[idx], None if cond is None else cond[idx], j) + lv * eps[idx, j]
            x = x.index_copy(0, idx, y.to(x.dtype))
    return x


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
    #: False: the method does not use the fake-score network (the loop skips the DSM phase).
    uses_fake: ClassVar[bool] = True
    #: False: a method for pixel teachers only, which a text-to-image teacher's prompts cannot condition
    text_conditioning: ClassVar[bool] = True

    config_class: ClassVar[type] = MethodConfig

    def __init__(self, cfg: MethodConfig, backend: str = "auto", *, sigma_data: float = 0.5,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 levels: Optional[NoiseLevels] = None, conditions: Optional[ConditioningBank] = None):
        """``sigma_data``: the teacher's data standard deviation (DSM weighting); ``autocast``: a
        zero-argument callable giving the mixed-precision context of the network forwards;
        ``levels``: what both steps draw their noise levels from (:func:`noise_levels`; default
        EDM's); ``conditions``: the bank training conditions are drawn from (e.g. prompt
        embeddings), else uniform class labels."""
        self.cfg = cfg
        self.backend = backend
        self.sigma_data = float(sigma_data)
        self.autocast = autocast
        self.levels = EDMLevels(cfg) if levels is None else levels
        self.conditions = conditions
        self.ctx: Optional[MethodContext] = None
        self.step_sigmas = self._step_sigmas()

    @property
    def steps(self) -> int:
        """The generator's applications (``method.steps``; 1 for methods without the option)."""
        return int(self.cfg.steps) if isinstance(self.cfg, FewStepConfig) else 1

    @property
    def needs(self) -> frozenset:
        """What the method needs from the loop besides the networks: a subset of {"data", "ema", "net"};
        non-empty means the loop calls :meth:`bind` with a MethodContext. A few-step generator needs
        the raw module to simulate its chain with (so a DDP wrapper sees one forward)."""
        return frozenset({"net"}) if self.steps > 1 else frozenset()

    def _step_sigmas(self) -> list:
        """The network noise level of each of the generator's applications, decreasing from
        ``sigma_init`` (:class:`FewStepConfig`)."""
        return [self.sigma_init] if self.steps == 1 else self.levels.few_step(self.steps)

    @property
    def sigma_init(self) -> float:
        """The generator's input noise level (``method.sigma_init``, or the teacher's at ``t_init``)."""
        return self.levels.sigma_init

    @property
    def sigma_end(self) -> float:
        """The last re-noise level of the student's multi-step sampler (its record's ``sigma_end``)."""
        return DEFAULT_SIGMA_END

    def bind(self, ctx: MethodContext) -> None:
        """Receive the loop's context (called once, before the first step, when ``needs`` is set)."""
        self.ctx = ctx

    def modules(self, fake: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Trained modules the method adds to the run besides the generator and the fake network (a
        discriminator head reading ``fake``'s features, say), by name. Asked once, with the unwrapped
        fake network, before anything is wrapped: the loop moves them to the run's device, keeps them
        whole and in step on every rank, checkpoints and resumes them under these names, and the
        update whose :meth:`param_groups` holds their parameters trains them."""
        return {}

    def param_groups(self, update: str, params: list, optim) -> list[dict]:
        """The optimiser's parameter groups of one update (``"generator"`` or ``"fake"``): ``params``,
        the network's trained parameters, at ``optim.lr`` (the fake update: ``optim.fake_lr`` when set).
        A method with :meth:`modules` adds their parameters to the update that trains them."""
        return [{"params": list(params), "lr": optim.lr if update == "generator" else (optim.fake_lr or optim.lr)}]

    def log_terms(self) -> dict:
        """Extra scalars for the metrics log (e.g. the value of each loss term of the last step)."""
        return {}

    # ----------------------------------------------------------------- the one thing to write
    def loss(self, y: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        """Scalar generator loss (``loss_scale * mean_b l_b``) from x_g, D_teacher(x_t), D_fake(x_t)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------- noise drawing
    def _cond(self, n: int, label_dim: int, gen: torch.Generator, device) -> Optional[Conditioning]:
        """A training batch's conditions: drawn from the bank, else uniformly random class labels
        (None for an unconditional teacher)."""
        if self.conditions is not None:
            return self.conditions.draw(n, gen, device)
        if label_dim <= 0:
            return None
        idx = torch.randint(0, label_dim, (n,), generator=gen, device=device)
        return Conditioning(labels=torch.nn.functional.one_hot(idx, label_dim).float())

    def _few_step_draws(self, n, shape, gen, device) -> dict:
        """A few-step generator's position of each sample (uniform) and its chain's re-noising, drawn
        after everything else (a one-step generator draws nothing: its random stream is unchanged)."""
        K = self.steps
        if K == 1:
            return {}
        pos = torch.randint(0, K, (n,), generator=gen, device=device)
        return dict(chain_pos=pos, chain_eps=torch.randn((n, K - 1, *shape), generator=gen, device=device))

    def draw_generator_noise(self, n, shape, label_dim, gen: torch.Generator, device) -> GeneratorNoise:
        z = torch.randn((n, *shape), generator=gen, device=device)
        cond = self._cond(n, label_dim, gen, device)
        sigma = self.levels.generator(n, gen, device)
        eps = torch.randn((n, *shape), generator=gen, device=device)
        return GeneratorNoise(z, sigma, eps, cond, **self._few_step_draws(n, shape, gen, device))

    def draw_fake_noise(self, n, shape, label_dim, gen: torch.Generator, device) -> FakeNoise:
        c = self.cfg
        z = torch.randn((n, *shape), generator=gen, device=device)
        cond = self._cond(n, label_dim, gen, device)
        sigma = self.levels.fake(n, gen, device)
        noise = torch.randn((n, *shape), generator=gen, device=device)
        drop = None
        if cond is not None and c.uncond_fraction > 0 and (c.guidance_fake != 1 or c.guidance_fake_train != 1):
            drop = torch.rand((n,), generator=gen, device=device) < c.uncond_fraction
        return FakeNoise(z, sigma, noise, cond, drop, **self._few_step_draws(n, shape, gen, device))

    # --------------------------------------------------------------------- shared pieces
    def apply_generator(self, G, x: torch.Tensor, sigma, cond: Optional[Conditioning] = None) -> torch.Tensor:
        """``D_theta(x; sigma, c)`` in float32 (``sigma``: a number or one per sample)."""
        if not torch.is_tensor(sigma):
            sigma = torch.full((x.shape[0],), float(sigma), dtype=torch.float32, device=x.device)
        with self.autocast():
            out = G(x, sigma, cond)
        return out.float()

    def generate(self, G, z: torch.Tensor, cond: Optional[Conditioning] = None,
                 chain_eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Generation from the latent ``z``: one step ``D_theta(sigma_init z; sigma_init, c)``, or all
        applications of a few-step generator with the re-noising ``chain_eps`` ((B, K - 1, *shape))."""
        if self.steps == 1:
            return self.apply_generator(G, z * self.sigma_init, self.sigma_init, cond)
        if chain_eps is None:
            raise ValueError(f"a {self.steps}-step generator needs its re-noising chain_eps, (B, {self.steps - 1}, *shape)")
        last = torch.full((z.shape[0],), self.steps - 1, dtype=torch.long, device=z.device)
        x, sigma = self.generator_inputs(G, z, cond, last, chain_eps)
        return self.apply_generator(G, x, sigma, cond)

    def generator_inputs(self, net, z: torch.Tensor, cond: Optional[Conditioning], pos: Optional[torch.Tensor],
                         eps: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and noise level of each sample's application of the generator: ``sigma_init z``
        (one step), or for a few-step generator the state of its chain at ``pos``, simulated with
        ``net`` and no gradient (:func:`chain_inputs`)."""
        levels = self.step_sigmas
        if pos is None:
            return z * levels[0], torch.full((z.shape[0],), levels[0], dtype=torch.float32, device=z.device)
        x = chain_inputs(lambda x, c, j: self.apply_generator(net, x, levels[j], c), z, cond, levels[0], levels[1:],
                         pos, eps, every_sample=True)
        return x, torch.tensor(levels, dtype=torch.float32, device=z.device)[pos]

    def _simulator(self, G):
        """The module a few-step chain is simulated with in the generator step: the raw generator (so
        a DDP wrapper sees one forward), else ``G``."""
        return self.ctx.net if self.ctx is not None and self.ctx.net is not None else G

    def _scores(self, teacher, fake, x_t, sigma, cond):
        c = self.cfg
        with self.autocast():
            y_real = guided(teacher, x_t, sigma, cond, c.guidance_teacher)
            y_fake = guided(fake, x_t, sigma, cond, c.guidance_fake)
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
        x_in, sigma_in = self.generator_inputs(self._simulator(G), noise.z, noise.cond, noise.chain_pos, noise.chain_eps)
        x_g = self.apply_generator(G, x_in, sigma_in, noise.cond)
        y_real, y_fake = self.scores_at_noised(teacher, fake, x_g, noise)
        with torch.no_grad():
            nan = nonfinite_sample_mask(x_g, y_real, y_fake).sum()
        return self.loss(x_g, y_real, y_fake), nan, x_g.detach()

    def fake_samples(self, G, noise: FakeNoise) -> torch.Tensor:
        """The generator samples the fake network is fitted to (called without gradient): one
        application per sample, at the sample's position for a few-step generator."""
        x_in, sigma_in = self.generator_inputs(G, noise.z, noise.cond, noise.chain_pos, noise.chain_eps)
        return self.apply_generator(G, x_in, sigma_in, noise.cond)

    def fake_loss(self, G, fake, noise: FakeNoise, samples: Optional[torch.Tensor] = None):
        """DSM loss of the fake network on detached generator samples: ``samples`` when given (the
        generator step's, drawn with ``noise.cond``), else fresh ones. The conditions ``noise.drop``
        marks are unconditional throughout (fresh samples too). With the teacher's noise levels the
        loss is the teacher's own objective (epsilon / weighted v MSE; flow teachers: the velocity
        MSE ``|v_hat - (eps - x0)|^2``). Returns ``(loss, nan_samples)``."""
        if noise.drop is not None:
            noise = dataclasses.replace(noise, cond=noise.cond.unconditional_where(noise.drop), drop=None)
        if samples is not None:
            x_g = samples
        else:
            with torch.no_grad():
                x_g = self.fake_samples(G, noise)
        x_n = x_g + _bcast(noise.sigma, x_g) * noise.noise
        with self.autocast():
            pred = guided(fake, x_n, noise.sigma, noise.cond, self.cfg.guidance_fake_train)
        loss = dsm_loss(
            pred.float(), x_g, noise.sigma, sigma_data=self.sigma_data,
            weighting=self.levels.weighting,
            loss_scale=self.cfg.fake_loss_scale, backend=self.backend,
        )
        with torch.no_grad():
            nan = nonfinite_sample_mask(x_g, pred).sum()
        return loss, nan
