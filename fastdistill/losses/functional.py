"""Functional score-distillation losses: validate, pick a backend, reduce.

Each per-sample loss ``l_b`` is a *sum* over the sample's elements. ``reduction`` gives
``loss_scale * mean_b(l_b)`` ("batchmean": the mean over samples of per-sample sums, as
``torch.nn.KLDivLoss`` names it; not a mean over elements), ``loss_scale * sum_b(l_b)``
("sum") or the per-sample ``loss_scale * l_b`` ("none"). The reduction factor is folded into
the fused kernel's output, so the common ``loss.backward()`` hands the op an upstream gradient
of ones and the backward pass returns the kernel's gradients without touching them again.

``divisor`` is the per-sample number each sample's loss (and its gradient) is divided by,
computed without gradient: ``"mean_abs"`` is ``max(mean_i |y - y_real|, 1e-5)`` (SiD's weight
and DMD2's normalisation), ``"none"`` divides by one, a (B,) tensor is used as given (detached;
a zero or negative entry is refused with a ValueError).
Options are keyword-only.

Non-finite samples (the same in every backend): a sample with a NaN, +inf or -inf anywhere in
its inputs (``y``, ``y_real``, ``y_fake``; ``pred``, ``target`` for DSM), or whose divisor
tensor entry or DSM ``sigma`` is not finite, has per-sample loss exactly 0 and gradient exactly
0 for every input. It still counts in the batch size of ``"batchmean"``: dropping it equals a
sum over the other samples divided by the full B. Inputs with an empty sample (shape
``(B, 0, ...)``) are rejected with a ValueError.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Union

import torch

from ..ops import registry

REDUCTIONS = ("none", "batchmean", "sum")
DIVISORS = ("mean_abs", "none")
DivisorArg = Union[str, torch.Tensor]

if not registry.EXTENSION_AVAILABLE:
    warnings.warn(f"fastdistill: fused kernels unavailable, using the reference path. {registry.EXTENSION_REASON}", stacklevel=2)


def _check_tensors(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    first_name, first = names[0], tensors[0]
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dim() < 1:
            raise ValueError(f"{name} needs a leading batch dimension, got a 0-d tensor")
        if t.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {first_name} has {tuple(first.shape)}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
        if t.dtype != first.dtype:
            raise TypeError(f"{name} is {t.dtype} but {first_name} is {first.dtype}")
    if first.shape[0] == 0:
        raise ValueError(f"{first_name} has an empty batch (shape {tuple(first.shape)})")
    if first.numel() == 0:
        raise ValueError(f"{first_name} has empty samples (shape {tuple(first.shape)}: 0 elements per sample); "
                         "each sample needs at least one element")


def _check_finite(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _scale(reduction: str, loss_scale: float, batch: int) -> float:
    if reduction == "mean":
        raise ValueError('reduction="mean" is ambiguous for these losses: use "batchmean" (the mean over samples '
                         'of per-sample sums), "sum" or "none"')
    _check_choice("reduction", reduction, REDUCTIONS)
    loss_scale = _check_finite("loss_scale", loss_scale)
    return loss_scale / batch if reduction == "batchmean" else loss_scale


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample if reduction == "none" else per_sample.sum()


def _divisor(divisor: DivisorArg, y: torch.Tensor) -> Optional[torch.Tensor]:
    """None asks the op for the mean_abs divisor; "none" is a divisor of ones; a tensor is used as given."""
    if isinstance(divisor, torch.Tensor):
        batch = y.shape[0]
        if divisor.shape not in ((batch,), (batch, *([1] * (y.dim() - 1)))):
            raise ValueError(f"divisor must have shape ({batch},), got {tuple(divisor.shape)}")
        if divisor.device != y.device or not divisor.is_floating_point():
            raise ValueError(f"divisor must be a floating-point tensor on {y.device}")
        d = divisor.detach().reshape(batch)
        if bool(((d <= 0) & torch.isfinite(d)).any()):  # one host sync, for a divisor given as a tensor only
            raise ValueError("divisor must be positive (a non-finite entry drops its sample, see above)")
        return d.to(registry._acc_dtype(y.dtype))
    _check_choice("divisor", divisor, DIVISORS)
    if divisor == "mean_abs":
        return None
    return torch.ones(y.shape[0], dtype=registry._acc_dtype(y.dtype), device=y.device)


def sid_loss(
    y: torch.Tensor,
    y_real: torch.Tensor,
    y_fake: torch.Tensor,
    *,
    alpha: float = 1.2,
    divisor: DivisorArg = "mean_abs",
    reduction: str = "batchmean",
    loss_scale: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """SiD generator loss (docs/algorithms.md section 2): ``l_b = sum_i d_i (a_i - alpha d_i) / divisor_b``
    with ``d = y_real - y_fake``, ``a = y_real - y``.

    y: generator output x_g; y_real / y_fake: teacher and fake-network denoisings of the
    same x_t. divisor: see the module docstring (SiD's official ``"mean_abs"`` by default).
    """
    _check_tensors(("y", "y_real", "y_fake"), (y, y_real, y_fake))
    alpha = _check_finite("alpha", alpha)
    w = _divisor(divisor, y)
    scale = _scale(reduction, loss_scale, y.shape[0])
    op = registry.resolve_backend(backend, y.device.type).sid
    return _reduce(op(y, y_real, y_fake, w, alpha, scale), reduction)


def sim_loss(
    y: torch.Tensor,
    y_real: torch.Tensor,
    y_fake: torch.Tensor,
    *,
    distance: str = "pseudo_huber",
    c: float = 1e-3,
    divisor: DivisorArg = "none",
    reduction: str = "batchmean",
    loss_scale: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """SIM generator loss (docs/algorithms.md section 3): ``S/N`` with the pseudo-Huber norm N, or ``S``
    for "l2", divided by ``divisor`` (none by default)."""
    _check_tensors(("y", "y_real", "y_fake"), (y, y_real, y_fake))
    _check_choice("distance", distance, ("pseudo_huber", "l2"))
    c = _check_finite("c", c)
    if distance == "pseudo_huber" and c <= 0:
        raise ValueError(f"c must be positive for the pseudo_huber distance, got {c}")
    w = _divisor(divisor, y)
    scale = _scale(reduction, loss_scale, y.shape[0])
    op = registry.resolve_backend(backend, y.device.type).sim
    return _reduce(op(y, y_real, y_fake, w, c, distance == "pseudo_huber", scale), reduction)


def dmd_loss(
    y: torch.Tensor,
    y_real: torch.Tensor,
    y_fake: torch.Tensor,
    *,
    divisor: DivisorArg = "mean_abs",
    reduction: str = "batchmean",
    loss_scale: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """DMD2 loss (docs/algorithms.md section 4); gradient only into y. ``divisor="mean_abs"`` is DMD2's
    normalisation, ``"none"`` Diff-Instruct's KL direction."""
    _check_tensors(("y", "y_real", "y_fake"), (y, y_real, y_fake))
    w = _divisor(divisor, y)
    scale = _scale(reduction, loss_scale, y.shape[0])
    op = registry.resolve_backend(backend, y.device.type).dmd
    # Detached here, not only inside the op: a fused op would otherwise hand back a graph when
    # only a teacher output requires grad, while the loss has no gradient for them.
    return _reduce(op(y, y_real.detach(), y_fake.detach(), w, scale), reduction)


def dsm_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    sigma: Union[torch.Tensor, float],
    *,
    sigma_data: float = 0.5,
    weighting: str = "edm",
    reduction: str = "batchmean",
    loss_scale: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Fake-score denoising loss ``lambda(sigma) sum_i (pred - target)^2`` (docs/algorithms.md section 1).

    sigma: a number, or a tensor with one value per sample ((B,) or (B, 1, ..., 1)).
    weighting: ``"edm"``, ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``; or
    ``"eps"``, ``lambda = 1 / sigma^2``: a VP teacher's own objective (section 9), since
    ``|eps_hat - eps|^2`` and the SNR/(SNR+1)-weighted ``|v_hat - v|^2`` both equal
    ``|D - x0|^2 / sigma^2`` (the fused op's EDM weight times a detached per-sample factor); or
    ``"flow"``, ``lambda = ((1 + sigma) / sigma)^2``: a flow-matching teacher's own objective, since
    with ``t = sigma / (1 + sigma)`` and ``D = x_t - t v_hat``, ``|v_hat - (eps - x0)|^2 = |D - x0|^2 / t^2``.
    """
    _check_tensors(("pred", "target"), (pred, target))
    _check_choice("weighting", weighting, ("edm", "eps", "flow"))
    sigma_data = _check_finite("sigma_data", sigma_data)
    if sigma_data <= 0:
        raise ValueError(f"sigma_data must be positive, got {sigma_data}")
    batch, acc = pred.shape[0], registry._acc_dtype(pred.dtype)
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() != batch or sigma.device != pred.device:
            raise ValueError(f"sigma must hold one value per sample ({batch}) on {pred.device}, got shape {tuple(sigma.shape)} on {sigma.device}")
        sigma = sigma.detach().reshape(batch).to(acc)
    else:
        sigma = torch.full((batch,), _check_finite("sigma", sigma), dtype=acc, device=pred.device)
    scale = _scale(reduction, loss_scale, batch)
    op = registry.resolve_backend(backend, pred.device.type).dsm
    if weighting == "edm":
        return _reduce(op(pred, target, sigma, sigma_data, scale), reduction)
    factor = sigma_data**2 / (sigma**2 + sigma_data**2)  # 1/sigma^2 over the EDM weight
    if weighting == "flow":
        factor = factor * (1 + sigma) ** 2
    factor = torch.nan_to_num(factor, nan=0.0)
    return _reduce(op(pred, target, sigma, sigma_data, 1.0) * (factor * scale).to(pred.dtype), reduction)
