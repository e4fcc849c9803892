"""Teacher sampling: the EDM deterministic Heun sampler and its Euler variant.

ALGORITHMS.md section 6. Noise levels (Karras et al. 2022):

    sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho,  i = 0..N-1,  sigma_N = 0

with N = 18, rho = 7, smin = 0.002, smax = 80 by default. The ODE `dx/dsigma = (x - D(x, sigma))/sigma`
is integrated from `x = latents * sigma_0`:

- Heun: an Euler step, then a second-order (trapezoidal) correction at every step except the
  last (which lands on sigma = 0): 2N - 1 network evaluations (35 for N = 18).
- Euler: the Euler step only: N evaluations.

As in NVIDIA's EDM code, the state and the step arithmetic are float64; the network is called
with float32 `x` and a float32 per-sample `sigma` of shape (B,), and its output is promoted back to
float64. A teacher may expose `round_sigma(sigma)` (discrete-time teachers snap to their grid),
and `sigma_min` / `sigma_max` (the schedule is clipped to them); all are optional.

Optional stochasticity (EDM's S_churn, default 0 = deterministic) draws from a
`torch.Generator`, so results are reproducible for a seed.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

__all__ = ["karras_sigmas", "edm_sampler", "heun_sampler", "euler_sampler", "sample", "data_shape_of"]


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


def data_shape_of(net) -> Tuple[int, ...]:
    """Shape of one sample: `net.data_shape` when the teacher has it, else (C, R, R)."""
    shape = getattr(net, "data_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    return (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))


def _call(net, x: torch.Tensor, sigma: torch.Tensor, class_labels, net_dtype) -> torch.Tensor:
    """One float32 network evaluation at a scalar sigma; returns float64."""
    B = x.shape[0]
    s = sigma.to(net_dtype).reshape(1).expand(B)
    out = net(x.to(net_dtype), s, class_labels)
    if out.shape != x.shape:
        raise RuntimeError(f"teacher returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    return out.to(torch.float64)


@torch.no_grad()
def edm_sampler(
    net,
    latents: torch.Tensor,
    class_labels: Optional[torch.Tensor] = None,
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
        net: a Denoiser `D(x, sigma, class_labels)`.
        latents: standard normal noise (B, *data_shape), any float dtype.
        class_labels: (B, label_dim) one-hot, or None.
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
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if class_labels is not None:
        if label_dim == 0:
            raise ValueError("class_labels given but the teacher is unconditional (label_dim 0)")
        if class_labels.shape != (latents.shape[0], label_dim):
            raise ValueError(
                f"class_labels must have shape (B, label_dim) = ({latents.shape[0]}, {label_dim}), "
                f"got {tuple(class_labels.shape)}"
            )
        class_labels = class_labels.to(device=latents.device, dtype=torch.float32)
    sigma_min = max(float(sigma_min), float(getattr(net, "sigma_min", 0.0) or 0.0))
    sigma_max = min(float(sigma_max), float(getattr(net, "sigma_max", float("inf"))))
    round_sigma = getattr(net, "round_sigma", None)

    def rnd(s: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(round_sigma(s), dtype=torch.float64, device=s.device) if round_sigma else s

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
        denoised = _call(net, x_hat, t_hat, class_labels, net_dtype)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if solver == "heun" and i < num_steps - 1:
            denoised = _call(net, x_next, t_next, class_labels, net_dtype)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if traj is not None:
            traj.append(x_next)
        if callback is not None:
            callback(i, x_next, denoised)
    return (x_next, traj) if return_trajectory else x_next


def heun_sampler(net, latents, class_labels=None, num_steps: int = 18, **kw):
    """EDM deterministic Heun sampler (2N-1 evaluations); see `edm_sampler`."""
    return edm_sampler(net, latents, class_labels, num_steps=num_steps, solver="heun", **kw)


def euler_sampler(net, latents, class_labels=None, num_steps: int = 18, **kw):
    """Euler variant of the EDM sampler (N evaluations); see `edm_sampler`."""
    return edm_sampler(net, latents, class_labels, num_steps=num_steps, solver="euler", **kw)


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
    shape = data_shape_of(net)
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    labels = None
    if label_dim > 0:
        if class_labels is None:
            labels = _random_labels(n, label_dim, generator, "cpu")
        else:
            cl = torch.as_tensor(class_labels)
            if cl.ndim == 0:
                cl = cl.reshape(1).expand(n)
            if cl.ndim == 1:
                if cl.shape[0] != n or cl.is_floating_point():
                    raise ValueError(f"class indices must be {n} integers")
                if (cl < 0).any() or (cl >= label_dim).any():
                    raise ValueError(f"class indices must be in [0, {label_dim})")
                cl = torch.nn.functional.one_hot(cl.long(), label_dim)
            if cl.shape != (n, label_dim):
                raise ValueError(f"class_labels must be (n, label_dim) = ({n}, {label_dim}), got {tuple(cl.shape)}")
            labels = cl.to(torch.float32).cpu()
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
        x = edm_sampler(net, z.to(device), lab, num_steps=num_steps, solver=solver,
                        generator=generator, **sampler_kwargs)
        outs.append(x.to(dtype))
    x = torch.cat(outs) if outs else torch.zeros((0, *shape), dtype=dtype, device=device)
    return (x, labels) if return_labels else x
