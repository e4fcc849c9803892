"""A teacher's noise schedule, in the VE form ``x = x0 + sigma eps`` every teacher here takes
(docs/algorithms.md sections 0 and 9).

- :class:`NoiseSchedule`: continuous sigma and no timesteps (EDM networks, analytic teachers, a
  user's own module);
- :class:`DiscreteSchedule`: a VP teacher's ``sigma_t = sqrt((1 - abar_t) / abar_t)`` per integer
  training timestep (diffusers' DDPM family);
- :class:`FlowSchedule`: flow matching's continuous ``t = timestep / T`` in (0, 1), ``sigma = t / (1 - t)``.

Each says the noise range the network was trained on, how a level is snapped to the ones the
network takes, the map between sigma and the teacher's timesteps, draws of levels between two
timesteps, and the DSM weighting under which a fake network's loss is the teacher's own training
objective. :func:`schedule_of` reads the schedule of a teacher.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

__all__ = ["NoiseSchedule", "DiscreteSchedule", "FlowSchedule", "schedule_of"]


class NoiseSchedule:
    """Continuous sigma in ``[sigma_min, sigma_max]``, snapped by the teacher's ``round_sigma`` when it has one."""

    kind = "edm"
    #: the DSM weighting of ``dsm_loss`` that is this teacher's own objective
    weighting = "edm"
    #: the number of training timesteps (None: the teacher has none)
    num_timesteps: Optional[int] = None

    def __init__(self, sigma_min: float = 0.0, sigma_max: float = math.inf, round_sigma: Optional[Callable] = None):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._round = round_sigma

    def round(self, sigma) -> torch.Tensor:
        """``sigma`` snapped to the levels the network takes (itself for continuous time)."""
        return torch.as_tensor(sigma) if self._round is None else torch.as_tensor(self._round(sigma))

    def sigma_at(self, timestep) -> torch.Tensor:
        """The noise level (float32) of a training timestep."""
        raise ValueError("this teacher has no timesteps (EDM's continuous sigma)")

    def timestep_at(self, sigma) -> torch.Tensor:
        """The training timestep of a noise level."""
        raise ValueError("this teacher has no timesteps (EDM's continuous sigma)")

    def draw(self, lo: int, hi: int, n: int, gen: torch.Generator, device) -> torch.Tensor:
        """``n`` noise levels of timesteps drawn uniformly from ``[lo, hi)``."""
        raise ValueError("this teacher has no timesteps (EDM's continuous sigma)")


class DiscreteSchedule(NoiseSchedule):
    """``sigmas``: (T,) ``sigma_t`` per timestep (float64; non-finite where ``abar_t`` is 0 or 1).
    ``timestep_at``: the teacher's own map from sigma to its timestep (nearest or interpolated)."""

    kind = "discrete"
    weighting = "eps"

    def __init__(self, sigmas: torch.Tensor, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                 round_sigma: Optional[Callable] = None, timestep_at: Optional[Callable] = None):
        finite = sigmas[torch.isfinite(sigmas) & (sigmas > 0)]
        super().__init__(float(finite.min()) if sigma_min is None else sigma_min,
                         float(finite.max()) if sigma_max is None else sigma_max, round_sigma)
        self.num_timesteps = int(sigmas.numel())
        self.sigmas = sigmas.float().cpu()
        self._timestep_at = timestep_at

    def sigma_at(self, timestep) -> torch.Tensor:
        return self.sigmas[timestep]

    def timestep_at(self, sigma) -> torch.Tensor:
        if self._timestep_at is None:
            raise ValueError("this teacher does not say which of its timesteps a noise level is (no timestep_for)")
        return self._timestep_at(torch.as_tensor(sigma))

    def draw(self, lo, hi, n, gen, device):
        t = torch.randint(lo, hi, (n,), generator=gen, device=device)
        return self.sigmas.to(device)[t]


class FlowSchedule(NoiseSchedule):
    """``T`` training timesteps of continuous ``t = timestep / T``; the network's range is
    ``t`` in ``[1/T, 1 - 1/T]`` unless the teacher says otherwise."""

    kind = "flow"
    weighting = "flow"

    def __init__(self, num_timesteps: int = 1000, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        T = int(num_timesteps)
        super().__init__(1.0 / (T - 1) if sigma_min is None else sigma_min, float(T - 1) if sigma_max is None else sigma_max)
        self.num_timesteps = T

    def sigma_at(self, timestep) -> torch.Tensor:
        """``sigma = t / (1 - t)`` at ``t = timestep / T`` (float64 in, float32 out)."""
        t = torch.as_tensor(timestep, dtype=torch.float64) / self.num_timesteps
        return (t / (1 - t)).to(torch.float32)

    def timestep_at(self, sigma) -> torch.Tensor:
        """``T t`` with ``t = sigma / (1 + sigma)`` (continuous, float64)."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        return self.num_timesteps * s / (1 + s)

    def draw(self, lo, hi, n, gen, device):  # continuous t, in float64 so that t stays below 1
        u = torch.rand((n,), generator=gen, device=device, dtype=torch.float64)
        return self.sigma_at(lo + u * (hi - lo))


def schedule_of(teacher) -> NoiseSchedule:
    """The schedule a teacher declares: ``flow`` and ``num_train_timesteps`` (flow matching), a
    (T,) ``sigmas`` buffer with ``timestep_for`` (discrete), else continuous sigma; ``sigma_min`` /
    ``sigma_max`` and ``round_sigma`` where it has them."""
    lo, hi = getattr(teacher, "sigma_min", None), getattr(teacher, "sigma_max", None)
    if getattr(teacher, "flow", False):
        return FlowSchedule(int(teacher.num_train_timesteps), lo, hi)
    rnd = getattr(teacher, "round_sigma", None)
    rnd = rnd if callable(rnd) else None
    sigmas = getattr(teacher, "sigmas", None)
    if torch.is_tensor(sigmas) and sigmas.ndim == 1:
        return DiscreteSchedule(sigmas, lo, hi, rnd, getattr(teacher, "timestep_for", None))
    return NoiseSchedule(float(lo or 0.0), math.inf if hi is None else float(hi), rnd)
