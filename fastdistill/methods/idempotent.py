"""What the time-free, idempotent methods (SIGN and IGN) share.

Both train a map ``f(x) = D_theta(x; sigma_s)`` with a fixed ``sigma_s`` (``method.sigma_init``)
and compare its applications with per-sample distances normalised per element, so the loss
weights do not depend on the resolution. Both draw real-data batches (or, without data, rows of a
bank of teacher samples).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..conditioning import Conditioning
from ..teachers.traits import traits
from .base import MethodConfig, MethodContext, check_choice, check_positive

__all__ = ["IdempotentConfig", "IDEM_DISTANCES", "idem_distance", "student_apply", "frozen_apply", "IdempotentMethod"]

IDEM_DISTANCES = ("auto", "pseudo_huber", "l1", "l2")


@dataclass
class IdempotentConfig(MethodConfig):
    """Options of the idempotent terms' distance, shared by SIGN and IGN."""

    idem_distance: str = "auto"  # d of the idempotent terms: pseudo_huber | l1 | l2 | auto (sign: pseudo_huber, ign: l1)
    idem_c: float = 0.01  # pseudo-Huber c, in RMS units: d = sqrt(mean_i (a-b)_i^2 + c^2) - c

    def validate(self) -> None:
        super().validate()
        check_choice("method.idem_distance", self.idem_distance, IDEM_DISTANCES)
        check_positive("method.idem_c", self.idem_c)


def idem_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "pseudo_huber", c: float = 0.01) -> torch.Tensor:
    """Per-sample distance (B,): ``pseudo_huber`` ``sqrt(mean_i (a-b)_i^2 + c^2) - c``,
    ``l1`` ``mean_i |a-b|``, ``l2`` ``mean_i (a-b)^2``."""
    diff = (a.float() - b.float()).reshape(a.shape[0], -1)
    if kind == "pseudo_huber":
        return (diff.square().mean(1) + c * c).sqrt() - c
    if kind == "l1":
        return diff.abs().mean(1)
    if kind == "l2":
        return diff.square().mean(1)
    raise ValueError(f"distance must be pseudo_huber, l1 or l2, got {kind!r}")


def _sigmas(x: torch.Tensor, s: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(s), dtype=torch.float32, device=x.device)


def student_apply(net, x: torch.Tensor, sigma_s: float, cond: Optional[Conditioning] = None) -> torch.Tensor:
    """``f(x) = D_theta(x; sigma_s)`` in float32 (gradient as the caller's mode allows)."""
    return net(x, _sigmas(x, sigma_s), cond).float()


def frozen_apply(net: torch.nn.Module, x: torch.Tensor, sigma_s: float,
                 cond: Optional[Conditioning] = None) -> torch.Tensor:
    """``f'(x)``: the network's *current* weights, detached. The gradient flows into ``x`` only.

    ``torch.func.functional_call`` with detached views of the parameters: no copy of the
    weights, nothing accumulates into ``.grad`` of the parameters.
    """
    params = {k: p.detach() for k, p in net.named_parameters()}
    return torch.func.functional_call(net, params, (x, _sigmas(x, sigma_s), cond)).float()


class IdempotentMethod:
    """Mixin of the time-free methods: the distance of their idempotent terms, and real-data (or
    teacher-bank) batches; an unconditional analytic teacher's exact samples stand in for data."""

    ctx: Optional[MethodContext]
    bank: Optional[dict] = None  # {"z", "y", "cond"} teacher ODE pairs, when the method built one
    default_distance: ClassVar[str] = "pseudo_huber"  # what idem_distance="auto" means for this method
    text_conditioning: ClassVar[bool] = False

    def bind(self, ctx: MethodContext) -> None:
        super().bind(ctx)
        if ctx.data is None and ctx.label_dim == 0 and traits(ctx.teacher).exact_samples:
            ctx.data = lambda n, g: (ctx.teacher.sample(n, generator=g), None)

    @property
    def distance_kind(self) -> str:
        k = self.cfg.idem_distance
        return self.default_distance if k == "auto" else k

    def d(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample distance of the idempotent terms, (B,)."""
        return idem_distance(a, b, self.distance_kind, self.cfg.idem_c)

    def _need_ctx(self) -> MethodContext:
        if self.ctx is None:
            raise RuntimeError(f"method {self.name!r} needs a MethodContext: call method.bind(ctx) first "
                               "(the training loop does this)")
        return self.ctx

    def data_batch(self, n: int, device) -> tuple[torch.Tensor, Optional[Conditioning]]:
        ctx = self._need_ctx()
        if ctx.data is not None:
            x, lab = ctx.data(n, ctx.data_generator)
            x = x.reshape(n, *ctx.shape).float()
            if not ctx.label_dim:
                lab = None
            elif lab is None:
                raise ValueError(f"the teacher is class-conditional (label_dim {ctx.label_dim}) but the data has no labels")
            cond = None if lab is None else Conditioning(labels=lab.float())
        else:
            if self.bank is None:
                raise RuntimeError(f"method {self.name!r} has no data and no teacher bank")
            idx = torch.randint(0, self.bank["y"].shape[0], (n,), generator=ctx.data_generator)
            idx = idx.to(self.bank["y"].device)
            x, cond = self.bank["y"][idx], None if self.bank["cond"] is None else self.bank["cond"][idx]
        return x.to(device), (None if cond is None else cond.to(device))
