"""Teacher training with the EDM loss and preconditioning, for small data.

EDM's recipe (Karras et al. 2022, "config F" loss):

    ln sigma ~ N(P_mean, P_std^2)            P_mean = -1.2, P_std = 1.2
    lambda(sigma) = (sigma^2 + sd^2) / (sigma * sd)^2
    loss = lambda(sigma) * |D(x0 + sigma n; sigma) - x0|^2

(lambda * c_out^2 = 1: the raw network's target has unit variance at every sigma). Optimiser
Adam, an EMA of the weights (half-life in samples, with EDM's ramp-up: the half-life is
capped at `ema_rampup * samples seen`), NaN/inf gradients sanitised as in EDM. The network
must already be preconditioned (an `EDMPrecond`, `MLPDenoiser` or any `Denoiser` whose
parameters require grad); its `sigma_data` is used for lambda.

    from fastdistill.data import load_dataset
    from fastdistill.teachers import MLPDenoiser, train_teacher
    data = load_dataset("8gaussians")
    net = MLPDenoiser(2, sigma_data=data.estimate_sigma_data())
    result = train_teacher(net, data, steps=3000, batch_size=512, lr=2e-3)
    teacher = result.teacher          # the EMA network, eval mode, frozen
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from .toolkit import edm_loss, ema_beta, ema_update, lr_factor, sanitize_gradients
from .traits import data_shape_of

__all__ = ["edm_loss", "train_teacher", "TrainResult"]


@dataclass
class TrainResult:
    """teacher: the EMA network (eval, frozen); net: the raw trained network;
    losses: per-step training loss (mean reduction); config: the settings used."""

    teacher: nn.Module
    net: nn.Module
    losses: List[float] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None


def _as_source(data):
    from fastdistill.data import ArrayDataset, DataSource

    if isinstance(data, DataSource):
        return data
    if torch.is_tensor(data):
        return ArrayDataset(data.detach().cpu().float(), name="tensor")
    raise TypeError("data must be a fastdistill DataSource (see fastdistill.data.load_dataset) or a tensor (N, ...)")


def train_teacher(
    net: nn.Module,
    data,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    lr_warmup_steps: int = 0,
    lr_decay: str = "none",
    grad_clip: Optional[float] = None,
    ema_halflife: Optional[float] = None,
    ema_rampup: Optional[float] = 0.05,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    seed: int = 0,
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
    save_path: Optional[str] = None,
) -> TrainResult:
    """Train a preconditioned denoiser on `data` with the EDM loss; returns a `TrainResult`.

    Args:
        net: the network to train (modified in place; e.g. `MLPDenoiser` or `EDMPrecond`).
        data: a `DataSource` (`load_dataset(...)`) or a tensor (N, ...). A conditional net
            (label_dim > 0) needs labelled data with the same label_dim; an unconditional net
            ignores labels.
        steps, batch_size, lr, betas, eps, weight_decay: Adam settings (constant lr by default).
        lr_warmup_steps: linear warm-up; lr_decay: "none" or "cosine" (to 0 at the last step).
        grad_clip: optional max gradient norm.
        ema_halflife: EMA half-life in samples (default 5% of all samples seen in training);
            ema_rampup: cap the half-life at ema_rampup * samples seen (EDM; None or 0 disables).
        P_mean, P_std: the lognormal training noise distribution.
        seed: seeds the data draws and the noise (CPU generator; reproducible).
        progress: tqdm progress bar with the running loss.
        save_path: when given, the EMA teacher is written with `save_teacher` (safetensors +
            JSON; reload with `load_teacher`).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    if lr_decay not in ("none", "cosine"):
        raise ValueError(f"lr_decay must be 'none' or 'cosine', got {lr_decay!r}")
    source = _as_source(data)
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if label_dim:
        if source.label_dim != label_dim:
            raise ValueError(f"the network is conditional with label_dim {label_dim} but the data have "
                             f"label_dim {source.label_dim}")
    shape = data_shape_of(net)
    if shape != tuple(source.data_shape):
        raise ValueError(f"data samples have shape {tuple(source.data_shape)} but the network expects {tuple(shape)}")
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the network has no trainable parameters")
    if device is None:
        device = params[0].device
    net.to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    total = steps * batch_size
    halflife = float(ema_halflife) if ema_halflife is not None else 0.05 * total
    g = torch.Generator().manual_seed(int(seed))
    config = dict(steps=steps, batch_size=batch_size, lr=lr, betas=list(betas), eps=eps, weight_decay=weight_decay,
                  lr_warmup_steps=lr_warmup_steps, lr_decay=lr_decay, grad_clip=grad_clip, ema_halflife=halflife,
                  ema_rampup=ema_rampup, P_mean=P_mean, P_std=P_std, seed=seed)

    it = range(steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        it = bar = tqdm(it, desc="train teacher", unit="step", dynamic_ncols=True)
    losses: List[float] = []
    seen = 0
    for step in it:
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, steps, lr_warmup_steps, lr_decay)
        x, labels = source.sample(batch_size, g)
        x = x.to(device)
        labels = labels.to(device) if (labels is not None and label_dim) else None
        loss = edm_loss(net, x, labels, P_mean=P_mean, P_std=P_std, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sanitize_gradients(p.grad for p in params if p.grad is not None)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        seen += batch_size
        ema_update(ema, net, ema_beta(batch_size, seen, halflife, ema_rampup))
        losses.append(float(loss.detach()))
        if bar is not None and (step % 25 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{sum(losses[-25:]) / len(losses[-25:]):.4f}")
    net.eval()
    path = None
    if save_path is not None:
        from .checkpoint import save_teacher

        path = save_teacher(ema, save_path, extra={"training": config})
    return TrainResult(teacher=ema, net=net, losses=losses, config=config, path=path)
