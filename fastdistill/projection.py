"""Zero-shot projection / editing with an idempotent student (SIGN, IGN; docs/algorithms.md section 5).

    from fastdistill.projection import project
    x = project("runs/digits-sign", corrupted, sigma=0.5, steps=2, seed=0, cond=3)

This module is :meth:`fastdistill.student.Student.project` for inputs from files and arrays:
``x_1 = f(y + sigma eps_1)`` and then, for ``steps > 1``, ``x_k = f(x_{k-1} + sigma_k eps_k)``
with ``schedule="reapply"`` (default: ``sigma_k = 0``, idempotent re-application),
``"constant"`` (``sigma_k = sigma``) or ``"karras"`` (the multi-step sampler's levels), where
``f(x) = D_theta(x; sigma_init)`` is the student's time-free map. ``sigma = 0`` is a plain
application of ``f``. Larger ``sigma`` forgets more of the input (more editing, less
faithfulness).

Inputs: a tensor or NumPy array, or a file: ``.npy`` / ``.npz`` (first array, or key
``samples``/``x``/``images``) or an image (``.png`` etc.). Image data must be (C, H, W), (H, W)
for one channel, (N, C, H, W), or channels-last (N, H, W, C) / (H, W, C), with the student's
channels and resolution, and values in [-1, 1] (floats) or 0..255 (uint8, rescaled). Vector
data (2-D toys) is (d,) or (N, d) and unbounded, but inputs whose magnitude exceeds
``MAX_ABS_INPUT`` (1e6), and ``sigma`` above it, are refused, not clipped: the student computes
in float32, and such values overflow its arithmetic (the output would be NaN). An output that is
not finite anyway is an error too. Anything else is a clear ``ValueError``.

CLI: ``fastdistill project runs/digits-sign --input noisy.npy --sigma 0.5 --out clean.png``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .plotting import save_samples_picture
from .student import Student, load_student

__all__ = ["project", "load_input", "save_output", "check_output_path"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
OUTPUT_SUFFIXES = (".npy", ".npz", ".png")
RANGE_TOL = 1e-3
#: largest input magnitude (vector data) and sigma accepted: beyond it float32 arithmetic in the network overflows
MAX_ABS_INPUT = 1e6


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
    given = tuple(t.shape)
    single = False
    if len(shape) == 1:  # vector data
        d = shape[0]
        if t.ndim == 1 and t.shape[0] == d:
            t, single = t[None], True
        if t.ndim != 2 or t.shape[1] != d:
            raise ValueError(f"the student works on {d}-dimensional vectors: input must be ({d},) or (N, {d}), "
                             f"got {tuple(t.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError("input contains NaN or infinite values")
        big = float(t.abs().max()) if t.numel() else 0.0  # before float32, where 1e39 would become inf
        if big > MAX_ABS_INPUT:
            raise ValueError(f"input values reach {big:.3g} in magnitude; the student computes in float32 and "
                             f"inputs beyond {MAX_ABS_INPUT:.0e} overflow its arithmetic (the output would be NaN): "
                             f"rescale the data to the scale the student was trained on")
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
        layout = "channels-first"
        if t.shape[1] != c and (t.shape[-1] == c or (t.shape[-1] in (1, 3, 4) and t.shape[1] > 4)):
            t, layout = t.permute(0, 3, 1, 2), "channels-last"  # (N, H, W, C) / (H, W, C), e.g. an RGB image file
        if t.shape[1] != c:
            hint = {(3, 1): "; convert it to grayscale first", (4, 1): "; convert it to grayscale first",
                    (1, 3): "; convert it to RGB first", (4, 3): "; drop the alpha channel first"}.get((t.shape[1], c), "")
            raise ValueError(f"input {given} read as {layout} images with {t.shape[1]} channels at "
                             f"{t.shape[2]}x{t.shape[3]}; the student expects {c}-channel {h}x{w} images{hint}")
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


def project(student, y, sigma: float = 0.0, steps: int = 1, seed: int = 0, cond=None, schedule: str = "reapply",
            which: str = "ema", device="cpu", batch_size: int = 1024) -> torch.Tensor:
    """Project ``y`` onto the student's samples (see :meth:`fastdistill.student.Student.project`).

    ``student``: a :class:`~fastdistill.student.Student`, a checkpoint / run directory or export, or
    a network in memory (then ``sigma_init`` is its ``sigma_init`` attribute or 2.5). ``y``: tensor,
    array or file path (see the module docstring). Returns float32 on the CPU, shaped like the
    (validated, channels-first) input.
    """
    if isinstance(student, torch.nn.Module):
        student = Student.from_network(student)
    elif not isinstance(student, Student):
        student = load_student(student, which=which, device=device)
    if isinstance(y, (str, os.PathLike)):
        y = load_input(y)
    if isinstance(sigma, (int, float)) and sigma > MAX_ABS_INPUT:
        raise ValueError(f"sigma={sigma:.3g} is beyond {MAX_ABS_INPUT:.0e}: the noised input would overflow the "
                         f"student's float32 arithmetic")
    x, single = _as_batch(y, student.info.data_shape)
    out = student.project(x, sigma=sigma, steps=steps, seed=seed, cond=cond, schedule=schedule, batch_size=batch_size)
    if not torch.isfinite(out).all():
        raise ValueError("the student's output is not finite (NaN or infinite values) for these inputs; check the "
                         "input's scale and the checkpoint")
    return out[0] if single else out


def check_output_path(path: Union[str, os.PathLike], suffixes=OUTPUT_SUFFIXES) -> Path:
    """Fail before any work when ``path`` cannot be written: a suffix not in ``suffixes`` (None: any),
    an existing directory, or a parent that is a regular file."""
    p = Path(path)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise ValueError(f"output {str(p)!r}: use {', '.join(suffixes[:-1])} or {suffixes[-1]}")
    if p.is_dir():
        raise IsADirectoryError(f"output {str(p)!r} is a directory; give a file name")
    for parent in p.parents:  # the nearest existing ancestor must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write {str(p)!r}: {str(parent)!r} is a file, not a directory")
            break
    return p


def save_output(x: torch.Tensor, path: Union[str, os.PathLike]) -> Path:
    """``.npy`` / ``.npz`` (key ``samples``) / ``.png`` (image grid, or a scatter plot for 2-D vectors)."""
    p = check_output_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suf = p.suffix.lower()
    arr = x.detach().cpu().numpy()
    if suf == ".npy":
        np.save(p, arr)
    elif suf == ".npz":
        np.savez(p, samples=arr)
    elif suf == ".png":
        xb = x if x.dim() in (2, 4) else x[None]
        save_samples_picture(xb, p, title="projected")
    else:
        raise ValueError(f"output {str(p)!r}: use .npy, .npz or .png")
    return p
