"""How the fused kernels read their inputs: as B rows of N elements. A tensor whose samples each
lie as one dense block (a contiguous tensor, a channels_last one too) is read as it lies, and its
gradient written in the same layout; anything else is copied contiguous first. One rule for the
C++/CUDA kernels (csrc/ops_common.h, ``rows_in_place``), their fake kernels and the Triton launchers."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["rows_in_place", "as_rows", "empty_grad"]


def _dense(t: torch.Tensor) -> bool:
    """A permutation of a contiguous layout (no gaps, no overlaps): torch's non-overlapping-and-dense."""
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(t.shape, t.stride()) if n != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def rows_in_place(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every tensor has one layout in which each sample is a dense block of N elements."""
    first = tensors[0]
    if first.dim() == 0 or first.numel() == 0:
        return False
    n = first.numel() // first.shape[0]
    return all(_dense(t) and t.stride() == first.stride() and (t.shape[0] <= 1 or t.stride(0) == n) for t in tensors)


def as_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors as the kernels read them: as they are where :func:`rows_in_place`, else contiguous copies."""
    return tensors if rows_in_place(tensors) else tuple(t.contiguous() for t in tensors)


def empty_grad(t: torch.Tensor) -> torch.Tensor:
    """A gradient for input ``t`` (already as the kernels read it), in its layout."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
