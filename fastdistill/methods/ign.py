"""IGN: idempotent generative network (Shocher et al., 2023), as a baseline for SIGN.

No teacher scores and no fake network: the network ``f`` is trained adversarially *against
itself* with three terms on a data batch ``x`` and source noise ``z``:

- reconstruction ``L_rec = d(f(x), x)``;
- idempotence ``L_idem = d(f'(f(z)), f(z))``: gradient through the inner application only;
- tightness ``L~_tight = d(f(f'(z)), f'(z))``: gradient through the outer application only
  (its input ``f'(z)`` is frozen); it is *maximised*, clamped by the reconstruction error:
  ``L_tight = -tanh(L~_tight / (a R)) a R`` with ``R = sg(L_rec)`` (batch mean), ``a = ign_clamp``.

``f'`` is the current weights without gradient (``torch.func.functional_call`` on detached
parameters). A sample with a non-finite value in any application drops out (zero loss, no gradient) and is
counted for the loop's ``max_nan_fraction``. Official choices: ``d`` = L1, weights rec/idem/tight = 20/20/2.5
(``method.ign_rec/ign_idem/ign_tight``), Adam lr 1e-4, betas (0.5, 0.999) (set in the
``toy-ign`` preset through ``optim.*``). On this engine ``f(x) = D_theta(x; sigma_init)`` (the
same time-free network as SIGN) and the source is ``z_src = sigma_init z``; the network starts
from the same initialisation as the other methods (the teacher / fitted denoiser), which keeps
the SIGN-vs-IGN comparison at equal budget and equal start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..conditioning import Conditioning
from ..ops.reference import nonfinite_sample_mask
from .base import DistillMethod, GeneratorNoise, _bcast, check_positive, register_method
from .idempotent import IdempotentConfig, IdempotentMethod, frozen_apply, student_apply

__all__ = ["IGN", "IGNConfig", "IGNNoise", "tightness"]


@dataclass
class IGNConfig(IdempotentConfig):
    """IGN's official weights."""

    name: str = "ign"
    ign_rec: float = 20.0  # weight of the reconstruction term
    ign_idem: float = 20.0  # weight of the idempotence term
    ign_tight: float = 2.5  # weight of the (maximised, clamped) tightness term
    ign_clamp: float = 1.5  # tightness clamp a: L_tight = -tanh(L~/(a R)) a R, R = sg(L_rec)

    def validate(self) -> None:
        super().validate()
        for k in ("ign_rec", "ign_idem", "ign_tight"):
            check_positive(f"method.{k}", getattr(self, k), allow_zero=True)
        check_positive("method.ign_clamp", self.ign_clamp)


def tightness(raw: torch.Tensor, rec: torch.Tensor, a: float = 1.5) -> torch.Tensor:
    """IGN's clamped tightness ``-tanh(raw / (a R)) a R`` per sample, ``R = sg(rec)`` (a scalar or (B,))."""
    r = (a * rec.detach()).clamp_min(1e-12)
    return -torch.tanh(raw / r) * r


@dataclass
class IGNNoise(GeneratorNoise):
    x_data: torch.Tensor
    data_cond: Optional[Conditioning]


@register_method("ign", config=IGNConfig)
class IGN(IdempotentMethod, DistillMethod):
    """Adversarial idempotent network (rec + idem + clamped tightness); data required."""

    needs = frozenset({"data", "net"})
    uses_fake = False
    scores_need_grad = False
    default_distance = "l1"

    def __init__(self, cfg: IGNConfig, backend: str = "auto", **kwargs):
        super().__init__(cfg, backend, **kwargs)
        self.last_terms: dict = {}

    def bind(self, ctx) -> None:
        super().bind(ctx)
        if ctx.data is None:
            raise ValueError("method ign needs real data: set data=<dataset name or path>")

    def log_terms(self) -> dict:
        return dict(self.last_terms)

    def draw_generator_noise(self, n, shape, label_dim, gen, device) -> IGNNoise:
        base = super().draw_generator_noise(n, shape, label_dim, gen, device)
        x, lab = self.data_batch(n, device)
        return IGNNoise(base.z, base.sigma, base.eps, base.cond, x, lab)

    def generator_loss(self, G, teacher, fake, noise: IGNNoise):
        c, ctx = self.cfg, self._need_ctx()
        s = c.sigma_init
        B = noise.z.shape[0]
        z_src = noise.z * s
        with torch.no_grad(), self.autocast():
            fz_frozen = frozen_apply(ctx.net, z_src, s, noise.cond)  # f'(z)
        with self.autocast():
            out = student_apply(G, torch.cat([noise.x_data, z_src, fz_frozen]), s,
                                Conditioning.cat([noise.data_cond, noise.cond, noise.cond]))
        f_x, f_z, f_fz = out.split(B)
        # non-finite samples (of any of the three applications) drop out: zeros in, zero loss, no gradient
        with torch.no_grad():
            bad = nonfinite_sample_mask(f_x, f_z, f_fz, fz_frozen, noise.x_data)
        f_x, f_z, f_fz, fz_frozen, x_data = (torch.where(_bcast(bad, t), torch.zeros_like(t), t)
                                             for t in (f_x, f_z, f_fz, fz_frozen, noise.x_data))
        good = (~bad).float()
        rec = self.d(f_x, x_data)
        with self.autocast():
            idem = self.d(frozen_apply(ctx.net, f_z, s, noise.cond), f_z)
        tight_raw = self.d(f_fz, fz_frozen)
        rec_mean = (rec * good).sum() / good.sum().clamp_min(1.0)
        tight = tightness(tight_raw, rec_mean, c.ign_clamp)
        total = ((c.ign_rec * rec + c.ign_idem * idem + c.ign_tight * tight) * good).mean()
        self.last_terms = {"ign_rec": float(rec_mean.detach()), "ign_idem": float(idem.mean().detach()),
                           "ign_tight_raw": float(tight_raw.mean().detach())}
        return total, bad.sum()

    def fake_loss(self, G, fake, noise):  # pragma: no cover - the loop skips the fake phase
        raise RuntimeError("IGN has no fake-score network (uses_fake = False)")
