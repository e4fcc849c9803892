"""Generator EMA with SiD's half-life ramp-up (docs/algorithms.md section 7)."""
from __future__ import annotations

from typing import Optional

import torch

from ..teachers import toolkit
from .distributed import local


def ema_beta(batch: int, images_seen: float, halflife_kimg: float, rampup: float) -> float:
    """The teacher-training toolkit's EMA decay with the run's half-life in kimg (``ema.halflife_kimg``)."""
    return toolkit.ema_beta(batch, images_seen, halflife_kimg * 1000.0, rampup)


class EMA:
    """EMA copy of a module's parameters, updated with one ``torch._foreach_lerp_``; buffers copied."""

    def __init__(self, source: torch.nn.Module, ema_module: torch.nn.Module, trained: Optional[list] = None):
        """``trained``: the source parameters that change (e.g. LoRA adapters); the others are never
        averaged (they stay equal). Default: all of them."""
        self.module = ema_module.requires_grad_(False).eval()
        src, dst = list(source.parameters()), list(self.module.parameters())
        if len(src) != len(dst):
            raise ValueError("EMA module does not match the source module")
        keep = None if trained is None else {id(p) for p in trained}
        pairs = [(a, b) for a, b in zip(src, dst) if keep is None or id(a) in keep]
        self._src_params = [a for a, _ in pairs]
        self._ema_params = [b for _, b in pairs]
        self._src_bufs = [b for b in source.buffers()]
        self._ema_bufs = [b for b in self.module.buffers()]

    @torch.no_grad()
    def update(self, beta: float) -> None:
        """Sharded (DTensor) parameters are averaged shard by shard: source and EMA are sharded alike."""
        if self._ema_params:
            src = [local(p.detach()) for p in self._src_params]
            torch._foreach_lerp_([local(p) for p in self._ema_params], src, 1.0 - beta)
        for b_ema, b in zip(self._ema_bufs, self._src_bufs):
            b_ema.copy_(b)
