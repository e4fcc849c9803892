"""Distances between point sets: sliced Wasserstein and MMD (RBF kernel, unbiased).

Both take two sets `x` (N, ...) and `y` (M, ...), flatten each sample to a vector, and compute in
float64. Random choices (projection directions, the median-heuristic subsample) come from a
`torch.Generator` seeded by `seed`, so a call is deterministic for a seed. Use them to compare
a sampler's output with data against the data-versus-data baseline (two independent draws).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

__all__ = ["sliced_wasserstein", "mmd_rbf", "median_bandwidth"]


def _points(x, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        x = torch.as_tensor(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty set of points (N, ...), got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _pair(x, y):
    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} vs {y.shape[1]}")
    if x.device != y.device:
        y = y.to(x.device)
    return x, y


def _wasserstein_1d_sorted(xs: torch.Tensor, ys: torch.Tensor, p: float) -> torch.Tensor:
    """Exact W_p^p between uniform empirical measures, columns already sorted: (N, P), (M, P) -> (P,)."""
    N, M = xs.shape[0], ys.shape[0]
    if N == M:
        return ((xs - ys).abs() ** p).mean(0)
    dev = xs.device
    # quantile functions are piecewise constant on the union of the breakpoints i/N and j/M
    u = torch.cat([torch.arange(1, N + 1, device=dev, dtype=torch.float64) / N,
                   torch.arange(1, M + 1, device=dev, dtype=torch.float64) / M])
    u = torch.unique(u.clamp(max=1.0))  # sorted
    w = torch.diff(u, prepend=u.new_zeros(1))
    mid = u - 0.5 * w
    ix = (mid * N).floor().long().clamp(0, N - 1)
    iy = (mid * M).floor().long().clamp(0, M - 1)
    return (w[:, None] * (xs[ix] - ys[iy]).abs() ** p).sum(0)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_projections: int = 256,
    p: float = 2.0,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Sliced p-Wasserstein distance `(E_theta W_p^p(theta.x, theta.y))^(1/p)`.

    Directions theta are uniform on the unit sphere (normalised Gaussians from `generator`, or
    a CPU generator seeded with `seed`). Each 1-D distance is exact for the empirical measures
    (any N and M). Returns a float64 scalar tensor.
    """
    x, y = _pair(x, y)
    if num_projections < 1:
        raise ValueError("num_projections must be >= 1")
    if p < 1:
        raise ValueError("p must be >= 1")
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    theta = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64,
                        device=g.device).to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    xs = (x @ theta).sort(dim=0).values
    ys = (y @ theta).sort(dim=0).values
    return _wasserstein_1d_sorted(xs, ys, p).mean() ** (1.0 / p)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return d.clamp_min(0.0)


def median_bandwidth(x, y=None, *, max_points: int = 1000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance over the pooled set (random subset of max_points)."""
    x = _points(x, "x")
    z = x if y is None else torch.cat(_pair(x, y))
    if z.shape[0] > max_points:
        g = torch.Generator().manual_seed(int(seed))
        z = z[torch.randperm(z.shape[0], generator=g)[:max_points].to(z.device)]
    d = _sqdist(z, z)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    vals = d[iu[0], iu[1]].sqrt()
    if vals.numel() == 0:
        return 1.0
    h = float(vals.median())
    return h if h > 0 else 1.0


def _kernel_sum(a, b, bws, block: int, exclude_diag: bool) -> torch.Tensor:
    """sum_{i,j} k(a_i, b_j) over blocks (memory O(block * M)); optionally skip i == j."""
    total = a.new_zeros(())
    for s in range(0, a.shape[0], block):
        d = _sqdist(a[s : s + block], b)
        k = sum(torch.exp(-d / (2.0 * h * h)) for h in bws)
        if exclude_diag:
            idx = torch.arange(s, min(s + block, a.shape[0]), device=a.device)
            k[idx - s, idx] = 0.0
        total = total + k.sum()
    return total


def mmd_rbf(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    bandwidth: Union[None, float, Sequence[float]] = None,
    unbiased: bool = True,
    seed: int = 0,
    block_size: int = 1024,
) -> torch.Tensor:
    """Squared maximum mean discrepancy MMD^2 with the RBF kernel `exp(-|a-b|^2 / (2 h^2))`.

    bandwidth: h, a list of h (the kernels are summed), or None for the median heuristic on
    the pooled set. The unbiased estimator (default) drops the i == j terms of the within-set
    sums, so it is ~0 (and may be slightly negative) for two sets from the same distribution:

        MMD^2_u = sum_{i!=j} k(x_i,x_j)/(N(N-1)) + sum_{i!=j} k(y_i,y_j)/(M(M-1)) - 2 mean k(x_i,y_j)

    Returns a float64 scalar tensor.
    """
    x, y = _pair(x, y)
    N, M = x.shape[0], y.shape[0]
    if bandwidth is None:
        bws = [median_bandwidth(x, y, seed=seed)]
    elif isinstance(bandwidth, (int, float)):
        bws = [float(bandwidth)]
    else:
        bws = [float(h) for h in bandwidth]
    if not bws or any(not (h > 0) for h in bws):
        raise ValueError(f"bandwidths must be positive, got {bandwidth}")
    if unbiased:
        if N < 2 or M < 2:
            raise ValueError("the unbiased MMD needs at least 2 points in each set")
        kxx = _kernel_sum(x, x, bws, block_size, True) / (N * (N - 1))
        kyy = _kernel_sum(y, y, bws, block_size, True) / (M * (M - 1))
    else:
        kxx = _kernel_sum(x, x, bws, block_size, False) / (N * N)
        kyy = _kernel_sum(y, y, bws, block_size, False) / (M * M)
    kxy = _kernel_sum(x, y, bws, block_size, False) / (N * M)
    return kxx + kyy - 2.0 * kxy
