"""Adam as SiD uses it (betas (0, 0.999), constant lr, no weight decay), or AdamW with decoupled
weight decay (DMD2's), fused or foreach; gradient sanitising and clipping."""
from __future__ import annotations

import torch

from ..teachers.toolkit import sanitize_gradients
from .distributed import local


def make_adam(groups: list[dict], betas, eps: float, impl: str, device: torch.device,
              weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam, or AdamW when ``weight_decay`` > 0, over parameter ``groups`` (``{"params": [...],
    "lr": ...}`` each; frozen parameters left out). ``impl``: fused (one kernel; CUDA and recent
    CPU builds), foreach (multi-tensor), plain, or auto."""
    params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    cls = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    kw = dict(betas=tuple(betas), eps=eps, weight_decay=float(weight_decay))
    if impl == "auto":
        impl = "fused" if _fused_supported(device) else "foreach"
    if impl == "fused":
        return cls(params, fused=True, **kw)
    if impl == "foreach":
        return cls(params, foreach=True, **kw)
    return cls(params, foreach=False, **kw)


def _fused_supported(device: torch.device) -> bool:
    try:
        p = torch.zeros(2, device=device, requires_grad=True)
        opt = torch.optim.Adam([p], fused=True)
        p.grad = torch.ones_like(p)
        opt.step()
        return True
    except Exception:
        return False


@torch.no_grad()
def sanitize_grads(params) -> None:
    """The toolkit's gradient clean-up on each parameter's gradient, shard by shard."""
    sanitize_gradients(local(p.grad) for p in params if p.grad is not None)
