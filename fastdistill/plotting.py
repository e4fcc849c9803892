"""Every picture fastdistill draws, through the libraries users already know.

Image grids go through ``torchvision.utils`` (``make_grid`` / ``save_image``, imported when a
grid is drawn, so the rest of fastdistill runs without torchvision), so a tile's pixels are
exactly the samples mapped from [-1, 1] to 0..255. Line plots, scatter panels and
labelled rows are drawn with matplotlib, an optional extra (``pip install 'fastdistill[plots]'``)
imported only when such a plot is drawn. Figures are built as ``matplotlib.figure.Figure``
objects rendered by Agg, never through pyplot: no global backend switch, no open-figure
registry to leak, safe in worker processes and notebooks alike.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

DPI = 100  # figure sizes are given in pixels; inches = pixels / DPI
_REFERENCE_COLOURS = ("0.45", "#aa7828")  # dashed reference lines alternate grey / brown


def _figure(width_px: float, height_px: float, **kwargs):
    """A standalone Figure of the given pixel size (matplotlib is imported only here)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("fastdistill.plotting needs matplotlib: pip install 'fastdistill[plots]'") from e
    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, **kwargs)


def _torchvision_utils():
    """torchvision.utils, imported on first use (only image grids need torchvision)."""
    try:
        from torchvision import utils
    except ImportError as e:
        raise ImportError("fastdistill's image grids need torchvision: pip install torchvision") from e
    return utils


def _save(fig, path, **savefig_kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, **savefig_kwargs)
    return path


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) on the CPU as float, at most 3 channels (RGB; 1 channel stays grey)."""
    return x.detach().float().cpu()[:, :3]


# ----------------------------------------------------------------------------- line plots
def line_figure(curves: dict, *, title: str = "", xlabel: str = "", ylabel: str = "", logy: bool = True,
                hlines: Optional[dict] = None, size=(720, 440)):
    """The :func:`line_plot` figure, unsaved: for notebooks, or to inspect what a plot shows.

    ``curves`` ``{label: [(x, y), ...]}``, ``hlines`` ``{label: y}`` drawn dashed; points with
    a missing, non-finite or (on a log axis) non-positive y are skipped. The legend gives each
    curve's label and last value, each reference line's label and value.
    """
    def ok(y):
        return y is not None and math.isfinite(y) and (y > 0 or not logy)

    fig = _figure(*size, layout="constrained")
    ax = fig.add_subplot()
    handles = []
    for j, (name, pts) in enumerate(curves.items()):
        pts = sorted((float(a), float(b)) for a, b in pts if ok(b))
        label = f"{name} {pts[-1][1]:.3g}" if pts else str(name)
        handles += ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", markersize=3, lw=2,
                           color=f"C{j % 10}", label=label)
    refs = [(k, float(v)) for k, v in (hlines or {}).items() if ok(v)]
    for j, (name, v) in enumerate(refs):
        handles.append(ax.axhline(v, ls="--", lw=1.2, color=_REFERENCE_COLOURS[j % 2], label=f"{name} {v:.3g}"))
    ys = [y for line in handles for y in line.get_ydata()]
    if logy:
        ax.set_yscale("log")
        if ys and max(ys) / min(ys) <= 1e3:  # a few decades (FIDs): ticks 1-2-5 per decade, written plainly
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", color="0.9")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    fig.suptitle(title, fontsize=11)  # over the whole figure: a long title does not run into the legend
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return fig


def line_plot(curves: dict, path, *, title: str = "", xlabel: str = "", ylabel: str = "", logy: bool = True,
              hlines: Optional[dict] = None, size=(720, 440)) -> Path:
    """Save :func:`line_figure` as a PNG of exactly ``size`` pixels; returns the path."""
    return _save(line_figure(curves, title=title, xlabel=xlabel, ylabel=ylabel, logy=logy, hlines=hlines, size=size),
                 path)


def tradeoff_plot(curves: dict, path, *, title: str = "", xlabel: str = "", ylabel: str = "",
                  size=(720, 440)) -> Path:
    """Save curves of ``{label: [(x, y, text), ...]}`` points (joined in the order given), each
    point annotated with its ``text`` (e.g. the guidance scale): a trade-off between two metrics."""
    fig = _figure(*size, layout="constrained")
    ax = fig.add_subplot()
    for j, (name, pts) in enumerate(curves.items()):
        pts = [(float(a), float(b), str(t)) for a, b, t in pts if math.isfinite(a) and math.isfinite(b)]
        ax.plot([a for a, _, _ in pts], [b for _, b, _ in pts], marker="o", markersize=5, lw=1.5,
                color=f"C{j % 10}", label=name)
        for a, b, t in pts:
            ax.annotate(t, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8, color=f"C{j % 10}")
    ax.grid(True, color="0.9")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    fig.suptitle(title, fontsize=11)
    if curves:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return _save(fig, path)


# ----------------------------------------------------------------------------- image grids
def image_grid(x: torch.Tensor, path, ncol: Optional[int] = None) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid, ``ncol`` per row (default: about
    square), 2-px white gaps between tiles; pixel values are ``(x + 1) * 127.5`` rounded."""
    x = _as_images(x)
    ncol = ncol or max(1, math.ceil(math.sqrt(x.shape[0])))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _torchvision_utils().save_image(x, path, nrow=ncol, padding=2, pad_value=1.0, normalize=True, value_range=(-1, 1))
    return path


def labelled_rows(rows: Sequence[tuple[str, torch.Tensor]], path, scale: int = 4) -> Path:
    """Save rows of small images, each ``(label, (k, C, H, W) tensor in [-1, 1])``, as one PNG:
    every row a strip of its images nearest-upscaled ``scale`` times (so tiny samples stay
    legible), the label written to its left. Rows with fewer images are padded white."""
    make_grid = _torchvision_utils().make_grid
    strips = []
    for _, x in rows:
        x = _as_images(x).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        strips.append(make_grid(x, nrow=x.shape[0], padding=2, pad_value=1.0, normalize=True, value_range=(-1, 1)))
    width = max(s.shape[-1] for s in strips)
    strips = [torch.nn.functional.pad(s, (0, width - s.shape[-1]), value=1.0) for s in strips]
    canvas = torch.cat(strips, dim=-2).permute(1, 2, 0).numpy()
    edges = np.cumsum([0] + [s.shape[-2] for s in strips])

    fig = _figure(canvas.shape[1], canvas.shape[0])  # one image pixel per output pixel
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks((edges[:-1] + edges[1:]) / 2 - 0.5, [name for name, _ in rows], fontsize=11)
    ax.tick_params(axis="y", length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    return _save(fig, path, bbox_inches="tight", pad_inches=0.05)  # grows the canvas to hold the labels


# ----------------------------------------------------------------------------- scatter plots
def scatter_panels(panels: Sequence[tuple[str, torch.Tensor]], path, size: int = 320,
                   lim: Optional[float] = None) -> Path:
    """Save side-by-side 2-D scatter plots, one ``size``-pixel panel per ``(title, (N, 2+) points)``
    (first two coordinates), on shared axes ``[-lim, lim]``; by default ``lim`` covers 99.5 % of
    all finite coordinates with a margin, so a few outliers do not shrink the picture."""
    pts = [p.detach().float().cpu().reshape(p.shape[0], -1)[:, :2].numpy() for _, p in panels]
    pts = [p[np.isfinite(p).all(1)] for p in pts]
    if lim is None:
        allp = np.concatenate(pts)
        lim = max(float(np.quantile(np.abs(allp), 0.995)) * 1.15, 1e-3) if allp.size else 1.0
    fig = _figure(len(panels) * size, size + 30, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for j, (ax, (title, _), p) in enumerate(zip(axes, panels, pts)):
        ax.axhline(0, color="0.9", lw=0.8, zorder=0)
        ax.axvline(0, color="0.9", lw=0.8, zorder=0)
        ax.scatter(p[:, 0], p[:, 1], s=2, linewidths=0, color=f"C{j % 10}")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    return _save(fig, path)


def save_samples_picture(x: torch.Tensor, path, title: str = "samples", ncol: Optional[int] = None) -> Path:
    """The picture that suits the samples: a grid for images (N, C, H, W; the first 64 unless
    ``ncol`` per row is given), a scatter plot of the first two coordinates for vector data."""
    if x.dim() == 4:
        return image_grid(x if ncol else x[:64], path, ncol=ncol)
    return scatter_panels([(title, x.reshape(x.shape[0], -1))], path)
