"""SIGN: score-based idempotent distillation (ALGORITHMS.md section 5) -- a RECONSTRUCTION.

Only the abstract and public reviews of Liu, Chiu & Zaman (2025, arXiv:2509.21470) are
available; the paper's exact equations, weights and schedules are not public. What is
confirmed: the student ``f`` maps data space to data space, has no time input, has the
teacher's architecture and starts from the teacher's weights; training is non-adversarial
and combines IGN's reconstruction and idempotence terms with score-based terms (flow, dmd,
reg, denoise); it samples in one or several steps and projects corrupted inputs onto the
data manifold. Everything below is our derivation from that, not the authors' code:

- student ``f(x) = D_theta(x; sigma_s)`` with the fixed ``sigma_s = method.sigma_init`` (2.5);
  source ``x_src = sigma_s z``, so one-step generation is exactly the SiD generator;
- ``L_dist``: the SiD (default) or DMD generator loss of sections 2/4 on ``x_g = f(x_src)``
  (``method.sign_dist``), with the usual fake-score DSM step (the paper's ``L_denoise``);
- ``L_idem = d(f'(f(x_src)), f(x_src))``, ``f'`` = the current weights without gradient
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

Distances (``method.idem_distance``), per sample, normalised per element so weights do not
depend on the resolution: ``pseudo_huber`` ``sqrt(mean_i (a-b)_i^2 + c^2) - c`` (default,
``c = method.idem_c``), ``l1`` ``mean_i |a-b|``, ``l2`` ``mean_i (a-b)^2``.

All student applications that need a gradient go through *one* forward of the (possibly
DDP-wrapped) generator on the concatenated inputs, which is both faster and DDP-safe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..losses import dmd_loss, sid_loss
from ..ops.reference import nan_sample_mask
from .base import DistillMethod, GeneratorNoise, MethodContext, _bcast, register_method

__all__ = ["SIGN", "SIGNNoise", "idem_distance", "frozen_apply", "student_apply", "flow_levels", "teacher_euler_step"]


# ------------------------------------------------------------------------------ helpers
def idem_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "pseudo_huber", c: float = 0.01) -> torch.Tensor:
    """Per-sample distance (B,) between two batches (see the module docstring)."""
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


def student_apply(net, x: torch.Tensor, sigma_s: float, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``f(x) = D_theta(x; sigma_s)`` in float32 (gradient as the caller's mode allows)."""
    return net(x, _sigmas(x, sigma_s), labels).float()


def frozen_apply(net: torch.nn.Module, x: torch.Tensor, sigma_s: float,
                 labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``f'(x)``: the network's *current* weights, detached. The gradient flows into ``x`` only.

    ``torch.func.functional_call`` with detached views of the parameters: no copy of the
    weights, nothing accumulates into ``.grad`` of the parameters.
    """
    params = {k: p.detach() for k, p in net.named_parameters()}
    return torch.func.functional_call(net, params, (x, _sigmas(x, sigma_s), labels)).float()


def flow_levels(n: int, sigma_min: float, sigma_max: float, rho: float, device=None) -> torch.Tensor:
    """The ``n`` Karras levels (decreasing, no trailing zero), float32."""
    from ..sampling import karras_sigmas

    return karras_sigmas(n, sigma_min, sigma_max, rho, append_zero=False).to(torch.float32).to(device)


def teacher_euler_step(teacher, x_hi: torch.Tensor, s_hi: torch.Tensor, s_lo: torch.Tensor,
                       labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One probability-flow Euler step ``x_lo = x_hi + (s_lo - s_hi)(x_hi - D(x_hi; s_hi))/s_hi`` (per-sample sigmas)."""
    d = teacher(x_hi, s_hi, labels).float()
    return x_hi + _bcast(s_lo - s_hi, x_hi) * (x_hi - d) / _bcast(s_hi, x_hi)


def _cat_labels(labels: list) -> Optional[torch.Tensor]:
    if all(lab is None for lab in labels):
        return None
    if any(lab is None for lab in labels):
        raise ValueError("mixing labelled and unlabelled batches for a class-conditional student")
    return torch.cat(labels)


@dataclass
class SIGNNoise(GeneratorNoise):
    """GeneratorNoise plus a real-data batch and the randomness of L_flow / L_reg (all batch-first)."""

    x_data: torch.Tensor  # (B, *shape) data (or teacher-bank) batch for L_rec / L_flow
    data_labels: Optional[torch.Tensor]
    flow_idx: torch.Tensor  # (B,) index k of the level pair (sigma_k, sigma_{k+1})
    flow_eps: torch.Tensor  # (B, *shape)
    reg_idx: Optional[torch.Tensor]  # (B,) bank rows for L_reg, or None


class _DataMixin:
    """Real-data / teacher-bank batches for methods that declare ``needs`` "data"."""

    ctx: Optional[MethodContext]

    def _need_ctx(self) -> MethodContext:
        if self.ctx is None:
            raise RuntimeError(f"method {self.name!r} needs a MethodContext: call method.bind(ctx) first "
                               "(the training loop does this)")
        return self.ctx

    def _check_data_labels(self, lab, label_dim: int) -> None:
        if label_dim and lab is None:
            raise ValueError(f"the teacher is class-conditional (label_dim {label_dim}) but the data has no labels")

    def data_batch(self, n: int, device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        ctx = self._need_ctx()
        if ctx.data is not None:
            x, lab = ctx.data(n, ctx.data_generator)
            x = x.reshape(n, *ctx.shape).float()
            if not ctx.label_dim:
                lab = None
            self._check_data_labels(lab, ctx.label_dim)
        else:
            bank = getattr(self, "bank", None)
            if bank is None:
                raise RuntimeError(f"method {self.name!r} has no data and no teacher bank")
            idx = torch.randint(0, bank["y"].shape[0], (n,), generator=ctx.data_generator)
            x, lab = bank["y"][idx.to(bank["y"].device)], None if bank["labels"] is None else bank["labels"][idx.to(bank["y"].device)]
        return x.to(device), (None if lab is None else lab.float().to(device))


@register_method("sign")
class SIGN(_DataMixin, DistillMethod):
    """Score-based idempotent distillation (reconstruction; see the module docstring)."""

    needs = frozenset({"data", "ema", "net"})

    def __init__(self, cfg, backend: str = "auto"):
        super().__init__(cfg, backend)
        self.bank: Optional[dict] = None
        self.last_terms: dict = {}

    @property
    def scores_need_grad(self) -> bool:  # type: ignore[override]
        return self.cfg.sign_dist == "sid"

    @property
    def distance_kind(self) -> str:
        k = self.cfg.idem_distance
        return "pseudo_huber" if k == "auto" else k

    def d(self, a, b) -> torch.Tensor:
        return idem_distance(a, b, self.distance_kind, self.cfg.idem_c)

    # ------------------------------------------------------------------ set-up
    def bind(self, ctx: MethodContext) -> None:
        super().bind(ctx)
        c = self.cfg
        if ctx.data is None and ctx.label_dim == 0 and hasattr(ctx.teacher, "sample"):
            ctx.data = lambda n, g: (ctx.teacher.sample(n, generator=g), None)
        if c.l_reg > 0 or (ctx.data is None and (c.l_rec > 0 or c.l_flow > 0)):
            self.bank = build_teacher_bank(ctx.teacher, c.bank_size, ctx.shape, ctx.label_dim, c.bank_steps,
                                           seed=ctx.seed * 31 + 5, device=ctx.device,
                                           sigma_min=c.sigma_min, sigma_max=c.sigma_max, rho=c.rho,
                                           progress=ctx.progress)
        self._levels = flow_levels(c.flow_levels, c.sigma_min, c.sigma_max, c.rho, ctx.device)

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
        return SIGNNoise(base.z, base.sigma, base.eps, base.labels, x, lab, flow_idx, flow_eps, reg_idx)

    # ------------------------------------------------------------------ the generator step
    def generator_loss(self, G, teacher, fake, noise: SIGNNoise):
        c, ctx = self.cfg, self._need_ctx()
        s = c.sigma_init
        B = noise.z.shape[0]
        parts, labs = [noise.z * s], [noise.labels]
        if c.l_rec > 0:
            parts.append(noise.x_data)
            labs.append(noise.data_labels)
        if c.l_flow > 0:
            lv = self._levels.to(noise.z.device)
            s_hi, s_lo = lv[noise.flow_idx], lv[noise.flow_idx + 1]
            x_hi = noise.x_data + _bcast(s_hi, noise.x_data) * noise.flow_eps
            with torch.no_grad(), self.autocast():
                x_lo = teacher_euler_step(teacher, x_hi, s_hi, s_lo, noise.data_labels)
                flow_target = student_apply(ctx.ema, x_lo, s, noise.data_labels)
            parts.append(x_hi)
            labs.append(noise.data_labels)
        if c.l_reg > 0:
            idx = noise.reg_idx.to(self.bank["z"].device)
            parts.append((self.bank["z"][idx] * s).to(noise.z.device))
            labs.append(None if self.bank["labels"] is None else self.bank["labels"][idx].to(noise.z.device))
        with self.autocast():
            out = student_apply(G, torch.cat(parts), s, _cat_labels(labs))
        chunks = list(out.split(B))
        x_g = chunks.pop(0)
        terms: dict = {}
        total = x_g.new_zeros(())

        # L_dist (SiD or DMD) on x_g, with the shared x_t
        y_real = y_fake = None
        if c.sign_dist != "none":
            y_real, y_fake = self.scores_at_noised(teacher, fake, x_g, noise)
            if c.sign_dist == "sid":
                l_dist = sid_loss(x_g, y_real, y_fake, alpha=c.alpha, weight=c.weight,
                                  loss_scale=c.generator_loss_scale, backend=self.backend)
            else:
                l_dist = dmd_loss(x_g, y_real, y_fake, normalize=c.normalize,
                                  loss_scale=c.generator_loss_scale, backend=self.backend)
            total = total + l_dist
            terms["dist"] = l_dist.detach()
        # L_idem: gradient only through the inner application
        if c.l_idem > 0:
            with self.autocast():
                outer = frozen_apply(ctx.net, x_g, s, noise.labels)
            l_idem = self.d(outer, x_g).mean()
            total = total + c.l_idem * l_idem
            terms["idem"] = l_idem.detach()
        if c.l_rec > 0:
            l_rec = self.d(chunks.pop(0), noise.x_data).mean()
            total = total + c.l_rec * l_rec
            terms["rec"] = l_rec.detach()
        if c.l_flow > 0:
            l_flow = self.d(chunks.pop(0), flow_target).mean()
            total = total + c.l_flow * l_flow
            terms["flow"] = l_flow.detach()
        if c.l_reg > 0:
            y_star = self.bank["y"][noise.reg_idx.to(self.bank["y"].device)].to(x_g.device)
            l_reg = self.d(chunks.pop(0), y_star).mean()
            total = total + c.l_reg * l_reg
            terms["reg"] = l_reg.detach()
        self.last_terms = {f"sign_{k}": float(v) for k, v in terms.items()}
        with torch.no_grad():
            nan = nan_sample_mask(*(t for t in (x_g, y_real, y_fake) if t is not None)).sum()
        return total, nan


@torch.no_grad()
def build_teacher_bank(teacher, n: int, shape, label_dim: int, num_steps: int = 18, seed: int = 0,
                       device="cpu", sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                       block: int = 256, progress: bool = False) -> dict:
    """``n`` teacher ODE pairs: ``z ~ N(0, I)`` and ``y* = Heun(teacher, sigma_max z)`` (2N-1 evaluations).

    Returns ``{"z", "y", "labels"}`` on ``device``. Used by L_reg (the pair) and as the
    teacher-sample fallback for L_rec / L_flow when there is no real data.
    """
    from ..sampling import heun_sampler

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
    return {"z": z.to(device), "y": torch.cat(ys), "labels": None if labels is None else labels.to(device)}
