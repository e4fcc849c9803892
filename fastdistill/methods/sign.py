"""SIGN: score-based idempotent distillation (docs/algorithms.md section 5) -- a RECONSTRUCTION.

Only the abstract and public reviews of Liu, Chiu & Zaman (2025, arXiv:2509.21470) are
available; the paper's exact equations, weights and schedules are not public. What is
confirmed: the student ``f`` maps data space to data space, has no time input, has the
teacher's architecture and starts from the teacher's weights; training is non-adversarial
and combines IGN's reconstruction and idempotence terms with score-based terms (flow, dmd,
reg, denoise); it samples in one or several steps and projects corrupted inputs onto the
data manifold. Everything below is our derivation from that, not the authors' code:

- student ``f(x) = D_theta(x; sigma_s)`` with the fixed ``sigma_s = method.sigma_init`` (2.5);
  source ``x_src = sigma_s z``, so one-step generation is exactly the SiD generator;
- multi-step sampling (:meth:`fastdistill.student.Student.sample`) is the consistency-model sampler
  with a time-free map: ``x_1 = f(sigma_s z)``, ``x_k = f(x_{k-1} + sigma_k eps_k)`` with the
  Karras levels ``sigma_2 > ... > sigma_K = method.sign_sigma_end``
  (:func:`fastdistill.sampling.multistep_schedule`);
- ``L_dist``: the SiD (default) or DMD generator loss of sections 2/4 on ``x_g = f(u)``
  (``method.sign_dist``), with the usual fake-score DSM step (the paper's ``L_denoise``) on
  samples drawn the same way. ``u`` is, per sample, the input of a randomly chosen application
  ``k = 1..K`` of the ``K = method.sign_steps``-step sampler, produced by running the sampler
  with the current weights and no gradient (:func:`chain_inputs`); ``P(k) ~ r^(k-1)`` with
  ``r = method.sign_pos_decay`` (1 = uniform; ``r < 1`` gives the one-step output more than
  its ``1/K`` share of the distribution-matching and idempotence signal). Reasoning: a one-step-only
  objective trains ``f`` on ``sigma_s z`` and on data, but the sampler's later applications
  see re-noised *samples* ``x_{k-1} + sigma_k eps``, a distribution ``f`` was never asked to
  map onto the data -- so its errors there accumulate and more steps got worse. Every
  application of an idempotent generator is meant to land on the data manifold, so each is
  a generator output the distribution-matching loss applies to; running the sampler to
  build the inputs trains exactly the states met at inference (as consistency / backward-
  simulation training does). The fake network then fits the mixture of the K applications'
  outputs; the mixture equals the data when each application's output does.
  ``sign_steps = 1`` is the one-step-only objective (``u = sigma_s z``);
- ``L_idem = d(f'(f(u)), f(u))``, ``f'`` = the current weights without gradient
  (``torch.func.functional_call`` on detached parameters: no copy of the weights), so the
  gradient reaches only the inner application;
- ``L_rec = d(f(x), x)`` on real data (``cfg.data`` or the analytic teacher's samples), else
  on teacher samples from a bank;
- ``L_flow = d(f(x_hi), sg(f_ema(x_lo)))``: ``x_hi = x + s_hi eps`` for adjacent levels
  ``s_lo < s_hi`` of the Karras grid (``method.flow_levels`` levels, sigma_min..sigma_max,
  rho) and ``x_lo`` one teacher Euler step down the probability-flow ODE;
- ``L_reg = d(f(sigma_s z), y*)`` (optional, ``method.l_reg > 0``) against a bank of teacher
  Heun ODE solutions ``y*`` started from the same ``z`` (``sigma_max z``);
- total ``L_dist + l_idem L_idem + l_rec L_rec + l_flow L_flow + l_reg L_reg``.

Non-finite samples drop out per sample, as in the fused losses: a sample with a NaN or inf in an idempotent
term's inputs contributes zero to that term (and no gradient) and counts as a bad sample for
the loop, which skips the step only above ``max_nan_fraction``.

Distances (``method.idem_distance``), per sample, normalised per element so weights do not
depend on the resolution: ``pseudo_huber`` ``sqrt(mean_i (a-b)_i^2 + c^2) - c`` (default,
``c = method.idem_c``), ``l1`` ``mean_i |a-b|``, ``l2`` ``mean_i (a-b)^2``.

All student applications that need a gradient go through *one* forward of the (possibly
DDP-wrapped) generator on the concatenated inputs, which is both faster and DDP-safe.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ..conditioning import Conditioning
from ..losses import dmd_loss, sid_loss
from ..losses.functional import DIVISORS
from ..ops.reference import nonfinite_sample_mask
from ..sampling import DEFAULT_SIGMA_END, heun_sampler, karras_sigmas, multistep_schedule
from .base import (DistillMethod, FakeNoise, GeneratorNoise, MethodContext, _bcast, chain_inputs, check, check_choice,
                   check_positive, register_method)
from .idempotent import IdempotentConfig, IdempotentMethod, frozen_apply, student_apply

__all__ = ["SIGN", "SIGNConfig", "SIGNNoise", "flow_levels", "teacher_euler_step"]


@dataclass
class SIGNConfig(IdempotentConfig):
    """SIGN's options (reconstructed); the student is ``D_theta(x; sigma_init)``."""

    name: str = "sign"
    sign_dist: str = "sid"  # L_dist on x_g = f(sigma_init z): sid | dmd | none
    alpha: float = 1.2  # SiD alpha of L_dist (sign_dist=sid)
    divisor: str = "mean_abs"  # per-sample stop-gradient divisor of L_dist (SiD's weight, DMD2's normalisation): mean_abs | none
    l_idem: float = 1.0  # weight of L_idem = d(f'(f(x_src)), f(x_src)), f' = frozen current weights
    l_rec: float = 1.0  # weight of L_rec = d(f(x), x) on real data (else teacher samples)
    l_flow: float = 1.0  # weight of L_flow = d(f(x_hi), sg(f_ema(x_lo))), one teacher Euler step
    l_reg: float = 0.0  # weight of L_reg = d(f(sigma_init z), y*) against a bank of teacher ODE pairs
    flow_levels: int = 18  # Karras grid (method.sigma_min..sigma_max, method.rho) whose adjacent levels L_flow uses
    sign_steps: int = 4  # L_dist and the fake DSM step see the outputs of all applications of the K-step sampler (K = sign_steps; 1 = one-step only)
    sign_pos_decay: float = 1.0  # P(application k) ~ decay^k, k = 0..sign_steps-1: 1 = uniform, < 1 favours the first (one-step) application
    sign_sigma_end: float = DEFAULT_SIGMA_END  # last re-noise level of the multi-step sampler's Karras schedule (training and sampling)
    bank_size: int = 1024  # teacher ODE pairs (z, y*) for L_reg, and teacher samples when there is no data
    bank_steps: int = 18  # Heun steps of the bank's teacher sampler (2N-1 evaluations)

    def validate(self) -> None:
        super().validate()
        check_choice("method.sign_dist", self.sign_dist, ("sid", "dmd", "none"))
        check_choice("method.divisor", self.divisor, DIVISORS)
        for k in ("l_idem", "l_rec", "l_flow", "l_reg"):
            check_positive(f"method.{k}", getattr(self, k), allow_zero=True)
        check(isinstance(self.flow_levels, int) and self.flow_levels >= 2,
              f"method.flow_levels must be an integer >= 2, got {self.flow_levels!r}")
        check(isinstance(self.sign_steps, int) and self.sign_steps >= 1,
              f"method.sign_steps must be an integer >= 1, got {self.sign_steps!r}")
        check_positive("method.sign_pos_decay", self.sign_pos_decay)
        check(0 < self.sign_sigma_end < self.sigma_init,
              f"method.sign_sigma_end must be in (0, sigma_init), got {self.sign_sigma_end!r}")
        check(isinstance(self.bank_size, int) and self.bank_size >= 1,
              f"method.bank_size must be an integer >= 1, got {self.bank_size!r}")
        check(isinstance(self.bank_steps, int) and self.bank_steps >= 2,
              f"method.bank_steps must be an integer >= 2, got {self.bank_steps!r}")


def flow_levels(n: int, sigma_min: float, sigma_max: float, rho: float, device=None) -> torch.Tensor:
    """The ``n`` Karras levels (decreasing, no trailing zero), float32."""
    return karras_sigmas(n, sigma_min, sigma_max, rho, append_zero=False).to(torch.float32).to(device)


def teacher_euler_step(teacher, x_hi: torch.Tensor, s_hi: torch.Tensor, s_lo: torch.Tensor,
                       cond: Optional[Conditioning] = None) -> torch.Tensor:
    """One probability-flow Euler step ``x_lo = x_hi + (s_lo - s_hi)(x_hi - D(x_hi; s_hi))/s_hi`` (per-sample sigmas)."""
    d = teacher(x_hi, s_hi, cond).float()
    return x_hi + _bcast(s_lo - s_hi, x_hi) * (x_hi - d) / _bcast(s_hi, x_hi)


@dataclass
class SIGNNoise(GeneratorNoise):
    """GeneratorNoise (its sampler positions always set) plus a real-data batch and the randomness
    of L_flow / L_reg (all batch-first)."""

    x_data: torch.Tensor  # (B, *shape) data (or teacher-bank) batch for L_rec / L_flow
    data_cond: Optional[Conditioning]
    flow_idx: torch.Tensor  # (B,) index k of the level pair (sigma_k, sigma_{k+1})
    flow_eps: torch.Tensor  # (B, *shape)
    reg_idx: Optional[torch.Tensor]  # (B,) bank rows for L_reg, or None


@register_method("sign", config=SIGNConfig)
class SIGN(IdempotentMethod, DistillMethod):
    """Score-based idempotent distillation (reconstruction; see the module docstring)."""

    needs = frozenset({"data", "ema", "net"})

    def __init__(self, cfg: SIGNConfig, backend: str = "auto", **kwargs):
        super().__init__(cfg, backend, **kwargs)
        self.bank: Optional[dict] = None
        self.last_terms: dict = {}

    @property
    def scores_need_grad(self) -> bool:  # type: ignore[override]
        return self.cfg.sign_dist == "sid"

    @property
    def sigma_end(self) -> float:
        return float(self.cfg.sign_sigma_end)

    def term(self, a: torch.Tensor, b: torch.Tensor, bad: Optional[torch.Tensor] = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean_b d(a_b, b_b)`` with the samples that have a NaN or inf in ``a`` or ``b`` (or are flagged in
        ``bad``) contributing zero (and no gradient), and that (B,) mask -- the fused losses' rule."""
        bad = nonfinite_sample_mask(a, b) if bad is None else bad | nonfinite_sample_mask(a, b)
        a, b = (torch.where(_bcast(bad, t), torch.zeros_like(t), t) for t in (a, b))
        return torch.where(bad, torch.zeros_like(bad, dtype=torch.float32), self.d(a, b)).mean(), bad

    # ------------------------------------------------------------------ set-up
    def bind(self, ctx: MethodContext) -> None:
        super().bind(ctx)
        c = self.cfg
        if c.l_reg > 0 or (ctx.data is None and (c.l_rec > 0 or c.l_flow > 0)):
            self.bank = build_teacher_bank(ctx.teacher, c.bank_size, ctx.shape, ctx.label_dim, c.bank_steps,
                                           seed=ctx.seed * 31 + 5, device=ctx.device,
                                           sigma_min=c.sigma_min, sigma_max=c.sigma_max, rho=c.rho,
                                           progress=ctx.progress)
        self._levels = flow_levels(c.flow_levels, c.sigma_min, c.sigma_max, c.rho, ctx.device)

    @property
    def chain_levels(self) -> list:
        """The re-noise levels of the ``sign_steps``-step sampler (:func:`fastdistill.sampling.multistep_schedule`)."""
        c = self.cfg
        return multistep_schedule(c.sign_steps, c.sigma_init, "karras", c.sign_sigma_end)

    def _draw_chain(self, n, shape, gen, device) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.cfg.sign_steps
        if k == 1:  # the one-step objective draws nothing (its random stream is the pre-multi-step one)
            return torch.zeros((n,), dtype=torch.long, device=device), torch.zeros((n, 0, *shape), device=device)
        r = self.cfg.sign_pos_decay
        if r == 1:  # uniform (the random stream of the runs before sign_pos_decay)
            pos = torch.randint(0, k, (n,), generator=gen, device=device)
        else:
            w = torch.tensor([r ** j for j in range(k)], dtype=torch.float32, device=device)
            pos = torch.multinomial(w, n, replacement=True, generator=gen)
        eps = torch.randn((n, k - 1, *shape), generator=gen, device=device)
        return pos, eps

    def sampler_inputs(self, net, z, cond, pos, eps) -> torch.Tensor:
        """:func:`chain_inputs` with the student ``net`` (the raw module in the generator step, so
        the DDP wrapper sees exactly one forward; the evaluation-mode generator in the fake step)."""
        s = self.cfg.sigma_init

        def apply(x, c, j):
            with self.autocast():
                return student_apply(net, x, s, c)

        return chain_inputs(apply, z, cond, s, self.chain_levels, pos, eps)

    def log_terms(self) -> dict:
        return dict(self.last_terms)

    # ------------------------------------------------------------------ noise
    def draw_generator_noise(self, n, shape, label_dim, gen, device) -> SIGNNoise:
        base = super().draw_generator_noise(n, shape, label_dim, gen, device)
        x, lab = self.data_batch(n, device)
        c = self.cfg
        flow_idx = torch.randint(0, c.flow_levels - 1, (n,), generator=gen, device=device)
        flow_eps = torch.randn((n, *shape), generator=gen, device=device)
        reg_idx = None
        if c.l_reg > 0:
            reg_idx = torch.randint(0, self.bank["z"].shape[0], (n,), generator=gen, device=device)
        pos, ch_eps = self._draw_chain(n, shape, gen, device)
        return SIGNNoise(base.z, base.sigma, base.eps, base.cond, x, lab, flow_idx, flow_eps, reg_idx,
                         chain_pos=pos, chain_eps=ch_eps)

    def draw_fake_noise(self, n, shape, label_dim, gen, device) -> FakeNoise:
        base = super().draw_fake_noise(n, shape, label_dim, gen, device)
        pos, ch_eps = self._draw_chain(n, shape, gen, device)
        return dataclasses.replace(base, chain_pos=pos, chain_eps=ch_eps)

    def fake_samples(self, G, noise: FakeNoise) -> torch.Tensor:
        """The outputs of all applications of the sampler, as L_dist sees them (so the fake score tracks them)."""
        x_in = self.sampler_inputs(G, noise.z, noise.cond, noise.chain_pos, noise.chain_eps)
        with self.autocast():
            return student_apply(G, x_in, self.cfg.sigma_init, noise.cond)

    # ------------------------------------------------------------------ the generator step
    def generator_loss(self, G, teacher, fake, noise: SIGNNoise):
        c, ctx = self.cfg, self._need_ctx()
        s = c.sigma_init
        B = noise.z.shape[0]
        parts = [self.sampler_inputs(ctx.net, noise.z, noise.cond, noise.chain_pos, noise.chain_eps)]
        conds = [noise.cond]
        if c.l_rec > 0:
            parts.append(noise.x_data)
            conds.append(noise.data_cond)
        if c.l_flow > 0:
            lv = self._levels.to(noise.z.device)
            s_hi, s_lo = lv[noise.flow_idx], lv[noise.flow_idx + 1]
            x_hi = noise.x_data + _bcast(s_hi, noise.x_data) * noise.flow_eps
            with torch.no_grad(), self.autocast():
                x_lo = teacher_euler_step(teacher, x_hi, s_hi, s_lo, noise.data_cond)
                flow_target = student_apply(ctx.ema, x_lo, s, noise.data_cond)
            parts.append(x_hi)
            conds.append(noise.data_cond)
        if c.l_reg > 0:
            idx = noise.reg_idx.to(self.bank["z"].device)
            parts.append((self.bank["z"][idx] * s).to(noise.z.device))
            conds.append(None if self.bank["cond"] is None else self.bank["cond"][idx].to(noise.z.device))
        with self.autocast():
            out = student_apply(G, torch.cat(parts), s, Conditioning.cat(conds))
        chunks = list(out.split(B))
        x_g = chunks.pop(0)
        terms: dict = {}
        total = x_g.new_zeros(())

        # L_dist (SiD or DMD) on x_g, with the shared x_t
        y_real = y_fake = None
        if c.sign_dist != "none":
            y_real, y_fake = self.scores_at_noised(teacher, fake, x_g, noise)
            if c.sign_dist == "sid":
                l_dist = sid_loss(x_g, y_real, y_fake, alpha=c.alpha, divisor=c.divisor,
                                  loss_scale=c.generator_loss_scale, backend=self.backend)
            else:
                l_dist = dmd_loss(x_g, y_real, y_fake, divisor=c.divisor,
                                  loss_scale=c.generator_loss_scale, backend=self.backend)
            total = total + l_dist
            terms["dist"] = l_dist.detach()
        with torch.no_grad():
            bad = nonfinite_sample_mask(*(t for t in (x_g, y_real, y_fake) if t is not None))
        pairs = []  # (name, weight, a, b, known bad samples) of the idempotent terms
        # L_idem: gradient only through the inner application (non-finite samples enter the outer one as zeros)
        if c.l_idem > 0:
            x_in = torch.where(_bcast(bad, x_g), torch.zeros_like(x_g), x_g)
            with self.autocast():
                outer = frozen_apply(ctx.net, x_in, s, noise.cond)
            pairs.append(("idem", c.l_idem, outer, x_in, bad))
        if c.l_rec > 0:
            pairs.append(("rec", c.l_rec, chunks.pop(0), noise.x_data, None))
        if c.l_flow > 0:
            pairs.append(("flow", c.l_flow, chunks.pop(0), flow_target, None))
        if c.l_reg > 0:
            y_star = self.bank["y"][noise.reg_idx.to(self.bank["y"].device)].to(x_g.device)
            pairs.append(("reg", c.l_reg, chunks.pop(0), y_star, None))
        for name, w, a, b, known in pairs:
            value, bad_t = self.term(a, b, known)
            total = total + w * value
            terms[name] = value.detach()
            bad = bad | bad_t
        self.last_terms = {f"sign_{k}": float(v) for k, v in terms.items()}
        return total, bad.sum()


@torch.no_grad()
def build_teacher_bank(teacher, n: int, shape, label_dim: int, num_steps: int = 18, seed: int = 0,
                       device="cpu", sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                       block: int = 256, progress: bool = False) -> dict:
    """``n`` teacher ODE pairs: ``z ~ N(0, I)`` and ``y* = Heun(teacher, sigma_max z)`` (2N-1 evaluations).

    Returns ``{"z", "y", "cond"}`` on ``device``. Used by L_reg (the pair) and as the
    teacher-sample fallback for L_rec / L_flow when there is no real data.
    """
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn((n, *shape), generator=g)
    labels = None
    if label_dim:
        labels = torch.nn.functional.one_hot(torch.randint(0, label_dim, (n,), generator=g), label_dim).float()
    ys = []
    it = range(0, n, block)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="teacher ODE bank", unit="block", dynamic_ncols=True)
    for i in it:
        zi = z[i:i + block].to(device)
        li = None if labels is None else labels[i:i + block].to(device)
        ys.append(heun_sampler(teacher, zi, li, num_steps=num_steps, sigma_min=sigma_min,
                               sigma_max=sigma_max, rho=rho).float())
    cond = None if labels is None else Conditioning(labels=labels).to(device)
    return {"z": z.to(device), "y": torch.cat(ys), "cond": cond}
