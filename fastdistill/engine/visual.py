"""Pictures of samples with PIL only: image grids, and scatter plots for 2-D data."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def image_grid(x: torch.Tensor, path, ncol: Optional[int] = None) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid."""
    x = x.detach().float().cpu()
    n, c, h, w = x.shape
    ncol = ncol or max(1, int(math.ceil(math.sqrt(n))))
    nrow = int(math.ceil(n / ncol))
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    canvas = torch.zeros((c, nrow * h, ncol * w), dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = img[i]
    arr = canvas.permute(1, 2, 0).numpy()
    if c == 1:
        arr = arr[..., 0]
    elif c > 3:
        arr = arr[..., :3]
    path = Path(path)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return path


def scatter_panels(panels: Sequence[tuple[str, torch.Tensor]], path, size: int = 320,
                   lim: Optional[float] = None) -> Path:
    """Save side-by-side 2-D scatter plots, one panel per (title, (N, 2) points), on shared axes."""
    pts = [p.detach().float().cpu().reshape(p.shape[0], -1)[:, :2].numpy() for _, p in panels]
    if lim is None:
        allp = np.concatenate([p[np.isfinite(p).all(1)] for p in pts]) if pts else np.zeros((1, 2))
        lim = float(np.quantile(np.abs(allp), 0.995)) * 1.15 if allp.size else 1.0
        lim = max(lim, 1e-3)
    pad, title_h = 8, 22
    W = len(panels) * (size + pad) + pad
    H = size + title_h + 2 * pad
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    for j, ((title, _), p) in enumerate(zip(panels, pts)):
        x0, y0 = pad + j * (size + pad), title_h + pad
        d.rectangle([x0, y0, x0 + size, y0 + size], outline=(120, 120, 120))
        d.line([x0 + size // 2, y0, x0 + size // 2, y0 + size], fill=(230, 230, 230))
        d.line([x0, y0 + size // 2, x0 + size, y0 + size // 2], fill=(230, 230, 230))
        d.text((x0 + 4, pad), title, fill=(0, 0, 0))
        col = COLOURS[j % len(COLOURS)]
        p = p[np.isfinite(p).all(1)]
        u = ((p[:, 0] / lim + 1) / 2 * size + x0)
        v = ((1 - (p[:, 1] / lim + 1) / 2) * size + y0)
        keep = (u >= x0) & (u <= x0 + size) & (v >= y0) & (v <= y0 + size)
        for a, b in zip(u[keep], v[keep]):
            d.point([(a, b), (a + 1, b), (a, b + 1), (a + 1, b + 1)], fill=col)
    path = Path(path)
    im.save(path)
    return path


def save_samples_picture(x: torch.Tensor, path, title: str = "samples") -> Path:
    """A grid for images, a scatter plot for 2-D vector data, a grid of the first two dims otherwise."""
    if x.dim() == 4:
        return image_grid(x[:64], path)
    return scatter_panels([(title, x.reshape(x.shape[0], -1))], path)
