"""Sampling from a distilled generator: ``sample(checkpoint, n, seed, steps=1) -> tensor``.

``x = G(z) = D_theta(sigma_init z; sigma_init, c)`` with ``z ~ N(0, I)`` drawn on the CPU from
``seed`` (so a seed gives the same samples on every device). ``checkpoint`` is a checkpoint
directory written by the engine, or a run directory (its latest checkpoint is used).

Multi-step sampling (idempotent students: SIGN / IGN, ALGORITHMS.md section 5) treats the
generator as the time-free map ``f(x) = D_theta(x; sigma_init)``:

- ``schedule="karras"`` (or a list of noise levels): ``x_1 = f(sigma_init z)``, then
  ``x_k = f(x_{k-1} + sigma_k eps_k)`` for a decreasing schedule ``sigma_2 > ... > sigma_K``:
  the consistency-model sampler (re-noise the current estimate to the next level, apply f).
  SIGN trains every application of the ``method.sign_steps``-step sampler (its inputs are built
  by :func:`fastdistill.methods.sign.chain_inputs`, the same recursion);
- ``schedule="reapply"``: pure re-application ``x_k = f(x_{k-1})`` (IGN's mode).

``steps=1`` is the one-step generator, unchanged. The noises ``eps_k`` are drawn on the CPU
after ``z`` from the same seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .engine import checkpoint as ckpt


def _resolve(checkpoint) -> Path:
    p = Path(checkpoint)
    if (p / ckpt.STATE_FILE).is_file():
        return p
    latest = ckpt.latest_checkpoint(p)
    if latest is None:
        raise FileNotFoundError(f"no distillation checkpoint at {checkpoint!s} (expected a checkpoint "
                                f"directory with {ckpt.STATE_FILE}, or a run directory containing checkpoints/)")
    return latest


def load_student(checkpoint, which: str = "ema", network: Optional[torch.nn.Module] = None,
                 device="cpu") -> tuple[torch.nn.Module, dict]:
    """The generator network (``which``: ema | generator) and the checkpoint's state dict.

    The architecture is rebuilt from the checkpoint's record: the fitted MLP for analytic
    teachers, the teacher checkpoint for ``teacher.kind=checkpoint``; for a teacher that was a
    Python object, pass a module of the same architecture as ``network``.
    """
    if which not in ("ema", "generator"):
        raise ValueError(f"which must be 'ema' or 'generator', got {which!r}")
    path = _resolve(checkpoint)
    tensors, state = ckpt.load_checkpoint(path)
    if network is not None:
        import copy

        net = copy.deepcopy(network)
    elif state.get("arch_config"):
        from .teachers.checkpoint import _decode, build_teacher

        net = build_teacher(state["arch_config"]["class_name"], _decode(state["arch_config"]["init_kwargs"]))
    elif state.get("arch"):
        from .engine.build import make_mlp

        net = make_mlp(state["arch"])
    elif state["config"]["teacher"]["kind"] == "checkpoint":
        from .teachers.loading import load_teacher

        net = load_teacher(state["config"]["teacher"]["path"])
    else:
        raise ValueError(f"{path}: the generator's architecture came from a Python object; pass network=<module>")
    net.load_state_dict(tensors[which])
    return net.to(device).eval().requires_grad_(False), state


def multistep_schedule(steps: int, sigma_s: float = 2.5, schedule="karras", sigma_end: float = 0.05,
                       rho: float = 7.0) -> list:
    """The noise levels ``sigma_2 > ... > sigma_K`` added before applications 2..K (``K = steps``).

    ``karras``: a Karras grid of ``steps`` levels from ``sigma_s`` down to ``sigma_end`` with
    ``rho``, without its first level ``sigma_s``; for sigma_s 2.5, sigma_end 0.05:
    2 steps -> [0.05], 3 -> [0.46, 0.05], 4 -> [0.85, 0.24, 0.05]. ``reapply``: zeros (pure
    re-application).
    A list / tuple: used as given (length steps - 1, non-negative).
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
        from .sampling import karras_sigmas

        grid = karras_sigmas(steps, sigma_end, sigma_s, rho, append_zero=False).tolist()
        return grid[1:]
    levels = [float(v) for v in schedule]
    if len(levels) != steps - 1:
        raise ValueError(f"an explicit schedule needs steps - 1 = {steps - 1} noise levels, got {len(levels)}")
    if any(not (v >= 0) for v in levels):
        raise ValueError(f"noise levels must be non-negative, got {levels}")
    return levels


@torch.no_grad()
def generate(net, z: torch.Tensor, sigma_s: float, labels: Optional[torch.Tensor] = None, steps: int = 1,
             schedule="karras", generator: Optional[torch.Generator] = None, sigma_end: float = 0.05,
             rho: float = 7.0) -> torch.Tensor:
    """``x_1 = f(sigma_s z)``; then ``x_k = f(x_{k-1} + sigma_k eps_k)`` (see :func:`multistep_schedule`).

    ``f(x) = net(x, sigma_s, labels)``. ``eps_k`` come from ``generator`` (CPU), else from torch's global RNG.
    """
    levels = multistep_schedule(steps, sigma_s, schedule, sigma_end, rho)
    sig = torch.full((z.shape[0],), float(sigma_s), device=z.device)
    x = net(z * sigma_s, sig, labels).float()
    for lv in levels:
        if lv > 0:
            eps = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
            x = x + lv * eps
        x = net(x, sig, labels).float()
    return x


@torch.no_grad()
def idempotence_error(net, x: torch.Tensor, sigma_s: float, labels: Optional[torch.Tensor] = None) -> float:
    """``mean |f(f(x)) - f(x)|`` for the time-free map ``f(x) = net(x, sigma_s, labels)``."""
    sig = torch.full((x.shape[0],), float(sigma_s), device=x.device)
    fx = net(x, sig, labels).float()
    return float((net(fx, sig, labels).float() - fx).abs().mean())


def trained_sigma_end(method_config: dict) -> float:
    """The last re-noise level a student was trained with, from its saved ``method`` config:
    ``sign_sigma_end``, or the default for checkpoints (and exports) that do not record it."""
    from .engine.config import MethodConfig

    return float(method_config.get("sign_sigma_end", MethodConfig.sign_sigma_end))


@torch.no_grad()
def sample(checkpoint, n: int, seed: int = 0, class_labels=None, which: str = "ema",
           batch_size: int = 1024, device="cpu", network: Optional[torch.nn.Module] = None,
           steps: int = 1, schedule="karras", sigma_end: Optional[float] = None) -> torch.Tensor:
    """``n`` samples, float32, shape (n, *data_shape), on the CPU; ``steps`` > 1: multi-step (see the module doc).

    ``sigma_end`` (the Karras schedule's last level): default, the one the student was trained
    with (:func:`trained_sigma_end`).
    """
    net, state = load_student(checkpoint, which, network, device)
    if sigma_end is None:
        sigma_end = trained_sigma_end(state["config"]["method"])
    n = int(n)
    if n < 0:
        raise ValueError("n must be non-negative")
    shape = tuple(state["data_shape"])
    label_dim = int(state.get("label_dim", 0))
    s = float(state["sigma_init"])
    g = torch.Generator().manual_seed(int(seed))
    labels = None
    if label_dim:
        if class_labels is None:
            idx = torch.randint(0, label_dim, (n,), generator=g)
        else:
            idx = torch.as_tensor(class_labels).long().reshape(-1).expand(n)
        labels = torch.nn.functional.one_hot(idx, label_dim).float()
    z = torch.randn((n, *shape), generator=g)
    levels = multistep_schedule(steps, s, schedule, sigma_end)
    noises = [torch.randn((n, *shape), generator=g) * lv for lv in levels]  # drawn after z: one-step unchanged
    out = []
    for i in range(0, n, batch_size):
        zi = z[i:i + batch_size].to(device)
        li = None if labels is None else labels[i:i + batch_size].to(device)
        sig = torch.full((zi.shape[0],), s, device=device)
        x = net(zi * s, sig, li).float()
        for e in noises:
            x = net(x + e[i:i + batch_size].to(device), sig, li).float()
        out.append(x.cpu())
    return torch.cat(out) if out else torch.zeros((0, *shape))


def save_samples(x: torch.Tensor, png_path=None, npz_path=None) -> dict:
    """Write a picture (image grid or 2-D scatter) and/or an .npz (key ``samples``)."""
    from .engine.visual import save_samples_picture

    out = {}
    if png_path:
        out["png"] = str(save_samples_picture(x, png_path))
    if npz_path:
        np.savez(npz_path, samples=x.detach().cpu().numpy())
        out["npz"] = str(npz_path)
    return out
