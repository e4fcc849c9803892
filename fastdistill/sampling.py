"""Sampling: the EDM Heun / Euler teacher samplers, the students' multi-step schedule, and the
one draw of latents and labels that every evaluation uses.

Teacher samplers, docs/algorithms.md section 6. Noise levels (Karras et al. 2022):

    sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho,  i = 0..N-1,  sigma_N = 0

with N = 18, rho = 7, smin = 0.002, smax = 80 by default. The ODE `dx/dsigma = (x - D(x, sigma))/sigma`
is integrated from `x = latents * sigma_0`:

- Heun: an Euler step, then a second-order (trapezoidal) correction at every step except the
  last (which lands on sigma = 0): 2N - 1 network evaluations (35 for N = 18).
- Euler: the Euler step only: N evaluations.

As in NVIDIA's EDM code, the state and the step arithmetic are float64; the network is called
with float32 `x` and a float32 per-sample `sigma` of shape (B,), and its output is promoted back to
float64. The teacher's noise schedule (its traits' ``schedule``) snaps the levels to the ones the
network takes (a discrete teacher's grid) and clips them to its range.

Optional stochasticity (EDM's S_churn, default 0 = deterministic) draws from a
`torch.Generator`, so results are reproducible for a seed.

:func:`draw` is the one source of latents and class labels for a seed: the trainer's
evaluations, `Student.sample`, `Student.project`, `fastdistill eval` and the reports all use
it, so one checkpoint and seed give the same samples everywhere.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .conditioning import Conditioning, as_conditioning
from .teachers.traits import data_shape_of, traits

__all__ = ["karras_sigmas", "edm_sampler", "heun_sampler", "euler_sampler", "sample", "data_shape_of",
           "draw", "balanced_labels", "multistep_schedule", "DEFAULT_SIGMA_END"]

#: the last re-noise level of the students' multi-step Karras schedule unless a student was trained with another
DEFAULT_SIGMA_END = 0.05


def karras_sigmas(
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> torch.Tensor:
    """The EDM noise levels sigma_0 > ... > sigma_{N-1} (plus a final 0 when append_zero).

    With num_steps == 1 the single level is sigma_max.
    """
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not (0 < sigma_min <= sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    frac = i / max(num_steps - 1, 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    t = (hi + frac * (lo - hi)) ** rho
    if append_zero:
        t = torch.cat([t, t.new_zeros(1)])
    return t.to(dtype)


def _call(net, x: torch.Tensor, sigma: torch.Tensor, cond, net_dtype) -> torch.Tensor:
    """One float32 network evaluation at a scalar sigma; returns float64."""
    B = x.shape[0]
    s = sigma.to(net_dtype).reshape(1).expand(B)
    out = net(x.to(net_dtype), s, cond)
    if out.shape != x.shape:
        raise RuntimeError(f"teacher returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    return out.to(torch.float64)


@torch.no_grad()
def edm_sampler(
    net,
    latents: torch.Tensor,
    cond=None,
    *,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    solver: str = "heun",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    generator: Optional[torch.Generator] = None,
    net_dtype: torch.dtype = torch.float32,
    return_trajectory: bool = False,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
):
    """Integrate the probability-flow ODE from `latents * sigma_max` to sigma = 0.

    Args:
        net: a Denoiser `D(x, sigma, cond)`.
        latents: standard normal noise (B, *data_shape), any float dtype.
        cond: a Conditioning (or a (B, label_dim) one-hot label tensor), or None.
        num_steps: N; Heun uses 2N-1 evaluations, Euler N.
        solver: "heun" (2nd order, default) or "euler".
        S_churn, S_min, S_max, S_noise: EDM stochastic sampler knobs; S_churn = 0 is the
            deterministic sampler. Noise comes from `generator`.
        return_trajectory: also return the list of float64 states at every sigma_i.
        callback: called as callback(i, x_i, denoised) after each step.

    Returns the final sample as float64 (NVIDIA returns float64 too; cast as needed), plus the
    trajectory when requested.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    if not torch.is_tensor(latents) or not latents.is_floating_point():
        raise TypeError("latents must be a floating-point tensor")
    if latents.ndim < 2:
        raise ValueError(f"latents must have shape (B, *data_shape), got {tuple(latents.shape)}")
    t = traits(net)
    label_dim = t.label_dim
    cond = as_conditioning(cond)
    if cond is not None:
        if cond.labels is not None and label_dim == 0:
            raise ValueError("class labels given but the teacher is unconditional (label_dim 0)")
        if cond.labels is not None and cond.labels.shape != (latents.shape[0], label_dim):
            raise ValueError(
                f"class labels must have shape (B, label_dim) = ({latents.shape[0]}, {label_dim}), "
                f"got {tuple(cond.labels.shape)}"
            )
        if cond.batch_size != latents.shape[0]:
            raise ValueError(f"conditioning for {cond.batch_size} samples, latents for {latents.shape[0]}")
        cond = cond.to(latents.device, torch.float32)
    schedule = t.schedule
    sigma_min, sigma_max = max(float(sigma_min), schedule.sigma_min), min(float(sigma_max), schedule.sigma_max)

    def rnd(s: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(schedule.round(s), dtype=torch.float64, device=s.device)

    t_steps = karras_sigmas(num_steps, sigma_min, sigma_max, rho, append_zero=False, device=latents.device)
    t_steps = torch.cat([rnd(t_steps), t_steps.new_zeros(1)])

    x_next = latents.to(torch.float64) * t_steps[0]
    traj = [x_next] if return_trajectory else None
    gamma_max = min(S_churn / num_steps, math.sqrt(2.0) - 1.0) if S_churn > 0 else 0.0
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        x_cur = x_next
        # optional churn: raise the noise level to t_hat by adding fresh noise
        if gamma_max > 0 and S_min <= float(t_cur) <= S_max:
            t_hat = rnd(t_cur + gamma_max * t_cur)
            noise = torch.randn(x_cur.shape, generator=generator, dtype=torch.float64,
                                device=generator.device if generator is not None else x_cur.device)
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * noise.to(x_cur.device)
        else:
            t_hat, x_hat = t_cur, x_cur
        denoised = _call(net, x_hat, t_hat, cond, net_dtype)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if solver == "heun" and i < num_steps - 1:
            denoised = _call(net, x_next, t_next, cond, net_dtype)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if traj is not None:
            traj.append(x_next)
        if callback is not None:
            callback(i, x_next, denoised)
    return (x_next, traj) if return_trajectory else x_next


def heun_sampler(net, latents, cond=None, num_steps: int = 18, **kw):
    """EDM deterministic Heun sampler (2N-1 evaluations); see `edm_sampler`."""
    return edm_sampler(net, latents, cond, num_steps=num_steps, solver="heun", **kw)


def euler_sampler(net, latents, cond=None, num_steps: int = 18, **kw):
    """Euler variant of the EDM sampler (N evaluations); see `edm_sampler`."""
    return edm_sampler(net, latents, cond, num_steps=num_steps, solver="euler", **kw)


_LATENT_BLOCK = 256


def _random_labels(n: int, label_dim: int, generator, device) -> torch.Tensor:
    idx = torch.randint(label_dim, (n,), generator=generator, device=generator.device if generator is not None else "cpu")
    return torch.nn.functional.one_hot(idx.to(device), label_dim).to(torch.float32)


@torch.no_grad()
def sample(
    net,
    n: int,
    *,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    class_labels=None,
    num_steps: int = 18,
    solver: str = "heun",
    batch_size: Optional[int] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    return_labels: bool = False,
    progress: bool = False,
    **sampler_kwargs,
):
    """Draw `n` samples from a teacher with the EDM sampler.

    Latents (and random class labels, for a conditional teacher with class_labels None) come
    from `generator` (or a fresh one seeded with `seed`, default 0), drawn on the CPU so the
    result is the same on every device. `class_labels` may be (n, label_dim) one-hot, (n,)
    class indices or a single int. Samples are returned as `dtype` (float32 by default),
    shape (n, *data_shape); with return_labels also the one-hot labels used (or None).
    """
    n = int(n)
    if n < 0:
        raise ValueError("n must be non-negative")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    elif seed is not None:
        raise ValueError("give a generator or a seed, not both")
    if device is None:
        try:
            device = next(iter(net.parameters())).device
        except (StopIteration, AttributeError):
            bufs = list(net.buffers()) if hasattr(net, "buffers") else []
            device = bufs[0].device if bufs else torch.device("cpu")
    t = traits(net)
    shape, label_dim = t.data_shape, t.label_dim
    labels = None
    if label_dim > 0:
        if class_labels is None:
            labels = _random_labels(n, label_dim, generator, "cpu")
        else:
            labels = Conditioning.from_labels(class_labels, label_dim, n=n).labels.cpu()
    elif class_labels is not None:
        raise ValueError("class_labels given but the teacher is unconditional (label_dim 0)")

    # Latents are drawn in fixed blocks of _LATENT_BLOCK samples, so the result does not depend
    # on batch_size (torch's CPU randn pattern depends on the tensor size).
    bs = n if not batch_size else int(batch_size)
    if bs < 1:
        raise ValueError("batch_size must be positive")
    pending: list = []
    have = 0
    outs = []
    it = range(0, n, bs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="sampling", unit="batch")
    for start in it:
        m = min(bs, n - start)
        while have < m:
            blk = torch.randn((min(_LATENT_BLOCK, n - start - have), *shape), generator=generator, dtype=torch.float32)
            pending.append(blk)
            have += blk.shape[0]
        buf = torch.cat(pending)
        z, rest = buf[:m], buf[m:]
        pending, have = ([rest] if rest.shape[0] else []), rest.shape[0]
        lab = labels[start : start + m].to(device) if labels is not None else None
        x = edm_sampler(net, z.to(device), None if lab is None else Conditioning(labels=lab), num_steps=num_steps, solver=solver,
                        generator=generator, **sampler_kwargs)
        outs.append(x.to(dtype))
    x = torch.cat(outs) if outs else torch.zeros((0, *shape), dtype=dtype, device=device)
    return (x, labels) if return_labels else x


# ----------------------------------------------------------------------------- students and evaluations
def balanced_labels(n: int, label_dim: int, generator: torch.Generator) -> Conditioning:
    """Class-balanced one-hot labels (each class ``n // label_dim`` or one more times) in a
    seeded random order. Balanced rather than random because FID in class-discriminative
    features reacts strongly to class proportions: on digits, random labels made the teacher's
    FID (Heun, 15 NFE) over four draws 0.150 +- 0.033, balanced ones 0.118 +- 0.018."""
    idx = (torch.arange(n) % label_dim)[torch.randperm(n, generator=generator)]
    return Conditioning(labels=torch.nn.functional.one_hot(idx, label_dim).float())


def draw(n: int, shape, seed: int, *, label_dim: int = 0, cond: Optional[Conditioning] = None,
         noises: int = 1) -> tuple[list[torch.Tensor], Optional[Conditioning]]:
    """The latents and conditioning of ``n`` samples for ``seed``, on the CPU.

    From one generator seeded with ``seed``: class-balanced labels (:func:`balanced_labels`)
    when the model is conditional (``label_dim > 0``), used unless ``cond`` is given, then
    ``noises`` standard normal tensors of shape (n, *shape): the latent ``z`` first, then the
    re-noising of each further step of a multi-step sampler. The labels are drawn even when
    ``cond`` is given, so a seed means the same latents whatever the conditioning (grids of
    one seed under different prompts or classes compare like with like). Returns (noises, cond).
    """
    g = torch.Generator().manual_seed(int(seed))
    if label_dim:
        balanced = balanced_labels(n, label_dim, g)
        cond = balanced if cond is None else cond
    return [torch.randn((n, *tuple(shape)), generator=g) for _ in range(int(noises))], cond


def multistep_schedule(steps: int, sigma_s: float = 2.5, schedule="karras", sigma_end: float = DEFAULT_SIGMA_END,
                       rho: float = 7.0) -> list:
    """The noise levels ``sigma_2 > ... > sigma_K`` a time-free student's multi-step sampler adds
    before applications 2..K (``K = steps``): ``x_1 = f(sigma_s z)``, ``x_k = f(x_{k-1} + sigma_k eps_k)``.

    ``karras``: a Karras grid of ``steps`` levels from ``sigma_s`` down to ``sigma_end`` with
    ``rho``, without its first level ``sigma_s``; for sigma_s 2.5, sigma_end 0.05:
    2 steps -> [0.05], 3 -> [0.46, 0.05], 4 -> [0.85, 0.24, 0.05]. ``reapply``: zeros (pure
    re-application). A list / tuple: used as given (length steps - 1, non-negative).
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(schedule, str):
        if schedule == "reapply":
            return [0.0] * (steps - 1)
        if schedule != "karras":
            raise ValueError(f"schedule must be 'karras', 'reapply' or a list of noise levels, got {schedule!r}")
        if steps == 1:
            return []
        if not 0 < sigma_end < sigma_s:
            raise ValueError(f"need 0 < sigma_end < sigma_s, got {sigma_end}, {sigma_s}")
        return karras_sigmas(steps, sigma_end, sigma_s, rho, append_zero=False).tolist()[1:]
    levels = [float(v) for v in schedule]
    if len(levels) != steps - 1:
        raise ValueError(f"an explicit schedule needs steps - 1 = {steps - 1} noise levels, got {len(levels)}")
    if any(not (v >= 0) for v in levels):
        raise ValueError(f"noise levels must be non-negative, got {levels}")
    return levels
