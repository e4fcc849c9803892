"""Adam as SiD uses it (betas (0, 0.999), constant lr, no weight decay), fused or foreach."""
from __future__ import annotations

import torch


def make_adam(params, lr: float, betas, eps: float, impl: str, device: torch.device) -> torch.optim.Adam:
    """``impl``: fused (one kernel; CUDA and recent CPU builds), foreach (multi-tensor), plain, or auto."""
    params = [p for p in params if p.requires_grad]
    kw = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0)
    if impl == "auto":
        impl = "fused" if _fused_supported(device) else "foreach"
    if impl == "fused":
        return torch.optim.Adam(params, fused=True, **kw)
    if impl == "foreach":
        return torch.optim.Adam(params, foreach=True, **kw)
    return torch.optim.Adam(params, foreach=False, **kw)


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
    """SiD's gradient clean-up: ``nan_to_num(nan=0, posinf=1e5, neginf=-1e5)`` in place."""
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
