"""Generator EMA with SiD's half-life ramp-up (docs/algorithms.md section 7)."""
from __future__ import annotations

import torch


def ema_beta(batch: int, images_seen: float, halflife_kimg: float, rampup: float) -> float:
    """``beta = 0.5 ** (batch / hl)``, ``hl = min(halflife, rampup * images_seen)`` in images."""
    hl = halflife_kimg * 1000.0
    if rampup and rampup > 0:
        hl = min(hl, rampup * images_seen)
    return 0.5 ** (batch / max(hl, 1e-8))


class EMA:
    """EMA copy of a module's parameters, updated with one ``torch._foreach_lerp_``; buffers copied."""

    def __init__(self, source: torch.nn.Module, ema_module: torch.nn.Module):
        self.module = ema_module.requires_grad_(False).eval()
        self._src_params = [p for p in source.parameters()]
        self._ema_params = [p for p in self.module.parameters()]
        self._src_bufs = [b for b in source.buffers()]
        self._ema_bufs = [b for b in self.module.buffers()]
        if len(self._src_params) != len(self._ema_params):
            raise ValueError("EMA module does not match the source module")

    @torch.no_grad()
    def update(self, beta: float) -> None:
        if self._ema_params:
            src = [p.detach() for p in self._src_params]
            torch._foreach_lerp_(self._ema_params, src, 1.0 - beta)
        for b_ema, b in zip(self._ema_bufs, self._src_bufs):
            b_ema.copy_(b)
