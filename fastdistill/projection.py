"""Zero-shot projection / editing with an idempotent student (SIGN, IGN; ALGORITHMS.md section 5).

    from fastdistill.projection import project
    x = project("runs/digits-sign", corrupted, sigma=0.5, steps=2, seed=0, class_labels=3)

``project(f, y, sigma, steps)`` computes ``x_1 = f(y + sigma eps_1)`` and then, for
``steps > 1``, ``x_k = f(x_{k-1} + sigma_k eps_k)`` with ``schedule="reapply"`` (default:
``sigma_k = 0``, idempotent re-application) or ``"constant"`` (``sigma_k = sigma``), where
``f(x) = D_theta(x; sigma_init)`` is the student's time-free map. ``sigma = 0`` is a plain
application of ``f``. Larger ``sigma`` forgets more of the input (more editing, less
faithfulness).

Inputs: a tensor or NumPy array, or a file: ``.npy`` / ``.npz`` (first array, or key
``samples``/``x``/``images``) or an image (``.png`` etc.). Image data must be (C, H, W), (H, W)
for one channel, (N, C, H, W), or channels-last (N, H, W, C) / (H, W, C), with the student's
channels and resolution, and values in [-1, 1] (floats) or 0..255 (uint8, rescaled). Vector
data (2-D toys) is (d,) or (N, d). Anything else is a clear ``ValueError``.

CLI (wired by the lead in ``fastdistill/cli.py`` through :func:`add_project_parser`):

    fastdistill project --checkpoint runs/digits-sign --input noisy.npy --sigma 0.5 --out clean.png
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["project", "load_input", "save_output", "add_project_parser", "project_command"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
RANGE_TOL = 1e-3


def load_input(path: Union[str, os.PathLike]) -> np.ndarray:
    """An array from ``.npy`` / ``.npz`` / an image file (images as uint8 H x W (x C))."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input {str(p)!r} does not exist")
    suf = p.suffix.lower()
    if suf == ".npy":
        return np.load(p, allow_pickle=False)
    if suf == ".npz":
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            if not keys:
                raise ValueError(f"{p}: empty .npz")
            for k in ("samples", "x", "images", "data"):
                if k in z:
                    return z[k]
            return z[keys[0]]
    if suf in IMAGE_SUFFIXES:
        from PIL import Image

        with Image.open(p) as im:
            im = im.convert("L") if im.mode in ("L", "1", "P", "I", "I;16", "F") else im.convert("RGB")
            return np.asarray(im)
    raise ValueError(f"{p}: unsupported input type {suf!r}; use .npy, .npz or an image ({', '.join(IMAGE_SUFFIXES)})")


def _as_batch(y, shape: tuple) -> tuple[torch.Tensor, bool]:
    """(N, *shape) float32 and whether the input was a single sample; validates shape / channels / range."""
    is_uint8 = (isinstance(y, np.ndarray) and y.dtype == np.uint8) or (torch.is_tensor(y) and y.dtype == torch.uint8)
    t = torch.as_tensor(np.array(y) if not torch.is_tensor(y) else y)
    if not (t.is_floating_point() or is_uint8 or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"input must be a numeric array, got dtype {t.dtype}")
    t = t.detach().cpu()
    single = False
    if len(shape) == 1:  # vector data
        d = shape[0]
        if t.ndim == 1 and t.shape[0] == d:
            t, single = t[None], True
        if t.ndim != 2 or t.shape[1] != d:
            raise ValueError(f"the student works on {d}-dimensional vectors: input must be ({d},) or (N, {d}), "
                             f"got {tuple(t.shape)}")
        t = t.float()
    else:
        c, h, w = shape
        if t.ndim == 2:
            if c != 1:
                raise ValueError(f"a 2-D (H, W) input is single-channel, but the student expects {c} channels")
            t, single = t[None, None], True
        elif t.ndim == 3:
            t, single = t[None], True
        elif t.ndim != 4:
            raise ValueError(f"image input must be (H, W), (C, H, W) or (N, C, H, W), got {tuple(t.shape)}")
        if t.shape[1] != c and t.shape[-1] == c and t.shape[1:3] == (h, w):
            t = t.permute(0, 3, 1, 2)  # channels-last
        if t.shape[1] != c:
            raise ValueError(f"input has {t.shape[1]} channels, the student expects {c} (shape {tuple(t.shape)})")
        if tuple(t.shape[2:]) != (h, w):
            raise ValueError(f"input resolution {tuple(t.shape[2:])} does not match the student's {(h, w)}; "
                             f"resize it first")
        if is_uint8:
            t = t.float() / 127.5 - 1.0
        else:
            t = t.float()
            if not torch.isfinite(t).all():
                raise ValueError("input contains NaN or infinite values")
            lo, hi = float(t.min()), float(t.max())
            if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
                raise ValueError(f"image values must be in [-1, 1] (or uint8 0..255), got [{lo:.3g}, {hi:.3g}]; "
                                 f"rescale e.g. with x / 127.5 - 1")
    if not torch.isfinite(t).all():
        raise ValueError("input contains NaN or infinite values")
    return t.contiguous(), single


def _labels(class_labels, n: int, label_dim: int) -> Optional[torch.Tensor]:
    if label_dim == 0:
        if class_labels is not None:
            raise ValueError("class labels given but the student is unconditional")
        return None
    if class_labels is None:
        raise ValueError(f"the student is class-conditional ({label_dim} classes): pass class_labels (an int or "
                         f"one per input)")
    cl = torch.as_tensor(class_labels)
    if cl.ndim == 2:
        if cl.shape != (n, label_dim):
            raise ValueError(f"one-hot labels must be ({n}, {label_dim}), got {tuple(cl.shape)}")
        return cl.float()
    cl = cl.long().reshape(-1)
    if cl.numel() == 1:
        cl = cl.expand(n)
    if cl.numel() != n:
        raise ValueError(f"need one class label or {n}, got {cl.numel()}")
    if (cl < 0).any() or (cl >= label_dim).any():
        raise ValueError(f"class labels must be in [0, {label_dim})")
    return torch.nn.functional.one_hot(cl, label_dim).float()


@torch.no_grad()
def project(checkpoint_or_net, y, sigma: float = 0.0, steps: int = 1, seed: int = 0, class_labels=None,
            schedule: str = "reapply", sigma_s: Optional[float] = None, which: str = "ema", device="cpu",
            batch_size: int = 1024) -> torch.Tensor:
    """Project ``y`` onto the student's manifold: ``x_1 = f(y + sigma eps)``, then ``steps - 1`` more applications.

    ``checkpoint_or_net``: a checkpoint / run directory, or a network (then ``sigma_s`` defaults
    to its ``sigma_init`` attribute or 2.5, and the data shape to its ``data_shape`` / image
    attributes). ``y``: tensor, array or file path (see the module docstring). Returns float32
    on the CPU, shaped like the (validated, channels-first) input.
    """
    if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if schedule not in ("reapply", "constant"):
        raise ValueError(f"schedule must be 'reapply' or 'constant', got {schedule!r}")
    if isinstance(checkpoint_or_net, torch.nn.Module):
        net = checkpoint_or_net
        from .sampling import data_shape_of

        shape = data_shape_of(net)
        label_dim = int(getattr(net, "label_dim", 0) or 0)
        s = float(sigma_s if sigma_s is not None else getattr(net, "sigma_init", 2.5))
        was = net.training
        net.eval()
    else:
        from .student import load_student

        net, state = load_student(checkpoint_or_net, which=which, device=device)
        shape, label_dim = tuple(state["data_shape"]), int(state.get("label_dim", 0))
        s = float(sigma_s if sigma_s is not None else state["sigma_init"])
        was = False
    if isinstance(y, (str, os.PathLike)):
        y = load_input(y)
    x, single = _as_batch(y, tuple(shape))
    labels = _labels(class_labels, x.shape[0], label_dim)
    g = torch.Generator().manual_seed(int(seed))
    dev = next(iter(net.parameters()), torch.empty(0)).device if hasattr(net, "parameters") else torch.device(device)
    outs = []
    try:
        for i in range(0, x.shape[0], batch_size):
            xi = x[i:i + batch_size]
            li = None if labels is None else labels[i:i + batch_size].to(dev)
            sig = torch.full((xi.shape[0],), s, device=dev)
            cur = xi.to(dev)
            for k in range(steps):
                lv = sigma if (k == 0 or schedule == "constant") else 0.0
                if lv > 0:
                    cur = cur + lv * torch.randn(xi.shape, generator=g).to(dev)
                cur = net(cur, sig, li).float()
            outs.append(cur.cpu())
    finally:
        if was:
            net.train()
    out = torch.cat(outs)
    return out[0] if single else out


def save_output(x: torch.Tensor, path: Union[str, os.PathLike]) -> Path:
    """``.npy`` / ``.npz`` (key ``samples``) / ``.png`` (image grid, or a scatter plot for 2-D vectors)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suf = p.suffix.lower()
    arr = x.detach().cpu().numpy()
    if suf == ".npy":
        np.save(p, arr)
    elif suf == ".npz":
        np.savez(p, samples=arr)
    elif suf == ".png":
        from .engine.visual import save_samples_picture

        xb = x if x.dim() in (2, 4) else x[None]
        save_samples_picture(xb, p, title="projected")
    else:
        raise ValueError(f"output {str(p)!r}: use .npy, .npz or .png")
    return p


def project_command(args: argparse.Namespace) -> int:
    try:
        x = project(args.checkpoint, args.input, sigma=args.sigma, steps=args.steps, seed=args.seed,
                    class_labels=args.label, schedule=args.schedule, which=args.which, device=args.device)
        p = save_output(x, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"fastdistill project: {exc}", file=sys.stderr)
        return 2
    print(f"projected {1 if x.dim() in (1, 3) else x.shape[0]} input(s) with sigma={args.sigma}, "
          f"steps={args.steps}: {p}")
    return 0


def add_project_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``fastdistill project`` to an ``argparse`` sub-parser set (the handler is ``args.func``)."""
    p = subparsers.add_parser(
        "project", help="project corrupted inputs onto the data manifold with an idempotent student (SIGN/IGN)",
        description="Zero-shot projection / editing: f(y + sigma*eps), re-applied for --steps, with the "
        "time-free student f of a SIGN/IGN checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory written by `fastdistill distill`")
    p.add_argument("--input", required=True, help=".npy / .npz / image file; images in [-1, 1] or uint8")
    p.add_argument("--sigma", type=float, default=0.0, help="noise added before the first application (>= 0)")
    p.add_argument("--steps", type=int, default=1, help="applications of the student")
    p.add_argument("--schedule", choices=("reapply", "constant"), default="reapply",
                   help="after the first step: re-apply without noise, or add sigma noise again")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, nargs="*", default=None,
                   help="class label(s) for a class-conditional student (one, or one per input)")
    p.add_argument("--out", required=True, help="output .npy / .npz / .png")
    p.add_argument("--which", choices=("ema", "generator"), default="ema")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=project_command)
    return p
