"""The noise levels a method draws both of its steps from (docs/algorithms.md sections 1, 9, 10).

One object per kind of schedule, each answering the same questions: the generator's input level
(``sigma_init``), the levels of a few-step generator's applications, the levels of a batch of
generator and fake steps (drawn from the caller's ``torch.Generator``, in a fixed order), and the
DSM weighting that makes the fake step the teacher's own objective:

- :class:`EDMLevels`: EDM's schedules (SiD's Karras-``u`` generator levels, the log-normal fake
  levels), for pixel teachers;
- :class:`TeacherLevels`: the teacher's own schedule (:mod:`fastdistill.teachers.schedule`: a
  discrete VP teacher's ``sigma_t``, a flow-matching teacher's ``sigma = t / (1 - t)``), timesteps
  drawn uniformly from ``[t_lo, t_hi)``, the generator at ``t_init``.
"""
from __future__ import annotations

import math

import torch

from ..sampling import multistep_schedule
from ..teachers.schedule import NoiseSchedule
from .checks import check

__all__ = ["NoiseLevels", "EDMLevels", "TeacherLevels", "few_step_timesteps", "karras_sigma"]


def karras_sigma(u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """SiD's generator-step sigma: ``(smax^(1/rho) + (1-u) (smin^(1/rho) - smax^(1/rho)))^rho``."""
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (a + (1.0 - u) * (b - a)) ** rho


def few_step_timesteps(t_init: int, steps: int) -> list[int]:
    """The teacher timesteps of a ``steps``-step generator starting at ``t_init``, evenly spaced:
    ``(t_init + 1)(K - k) / K - 1`` (DMD2's list for t_init 999, K 4: [999, 749, 499, 249])."""
    return [(t_init + 1) * (steps - k) // steps - 1 for k in range(steps)]


class NoiseLevels:
    """The interface; ``cfg``: the method's config (its level options)."""

    #: the fake step's DSM weighting (``dsm_loss``'s ``weighting``)
    weighting: str = "edm"

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def sigma_init(self) -> float:
        raise NotImplementedError

    def few_step(self, steps: int) -> list[float]:
        """The level of each of a ``steps``-step generator's applications, from ``sigma_init`` down."""
        raise NotImplementedError

    def generator(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        """The levels of ``n`` samples of a generator step."""
        raise NotImplementedError

    def fake(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        """The levels of ``n`` samples of a fake-score step."""
        raise NotImplementedError


class EDMLevels(NoiseLevels):
    weighting = "edm"

    @property
    def sigma_init(self) -> float:
        return float(self.cfg.sigma_init)

    def few_step(self, steps: int) -> list[float]:
        return [self.sigma_init] + multistep_schedule(steps, self.sigma_init, "karras", self.cfg.step_sigma_end,
                                                      rho=self.cfg.rho)

    def generator(self, n, gen, device):
        c = self.cfg
        u = torch.rand((n,), generator=gen, device=device) * (c.t_max / 1000.0)
        return karras_sigma(u, c.sigma_min, c.sigma_max, c.rho)

    def fake(self, n, gen, device):
        c = self.cfg
        return (torch.randn((n,), generator=gen, device=device) * c.fake_p_std + c.fake_p_mean).exp()


class TeacherLevels(NoiseLevels):
    """Both steps at the teacher's own timesteps ``[t_lo, t_hi)`` of its schedule (a discrete
    teacher's integer timesteps, a flow teacher's continuous ``t``); the generator at ``t_init``;
    the fake step weighted as the teacher's own objective."""

    def __init__(self, cfg, schedule: NoiseSchedule):
        super().__init__(cfg)
        self.schedule = schedule
        self.weighting = schedule.weighting

    @property
    def sigma_init(self) -> float:
        return float(self.schedule.sigma_at(self.cfg.t_init))

    def few_step(self, steps: int) -> list[float]:
        ts = few_step_timesteps(self.cfg.t_init, steps)
        check(ts[-1] >= 1, f"method.steps={steps} does not fit below method.t_init={self.cfg.t_init}: the last "
                           f"application would be at timestep {ts[-1]}; need t_init + 1 >= 2 K")
        sig = [float(self.schedule.sigma_at(t)) for t in ts]
        check(all(math.isfinite(v) and v > 0 for v in sig),
              f"the teacher's noise levels at the few-step timesteps {ts} are not all finite and positive: {sig}")
        return sig

    def generator(self, n, gen, device):
        return self.schedule.draw(self.cfg.t_lo, self.cfg.t_hi, n, gen, device)

    def fake(self, n, gen, device):
        return self.generator(n, gen, device)
