"""A small EDM teacher for scikit-learn's 8x8 digits, shipped with the package.

The shipped teacher (``fastdistill/assets/digits_teacher.safetensors``, fastdistill's
single-file teacher format) is an ``EDMPrecond`` around a class-conditional ``SongUNet``
(DDPM++ layout) sized for 8x8 images: preset ``"digits-small"`` below, label_dim 10,
sigma_data 0.5 (the EDM convention; the digits' own pixel std is 0.75). Its weights are
stored in float16 to keep the file small; :func:`load_digits_teacher` rebuilds the float32
network and the float16 values convert to float32 exactly, so the loaded network is the
saved one. Use it as the default teacher of the digits examples and of the test-suite:

    from fastdistill.teachers.digits import load_digits_teacher
    from fastdistill.sampling import sample
    teacher = load_digits_teacher()                  # EDMPrecond, eval, frozen, float32
    x = sample(teacher, 64, seed=0, num_steps=18)    # (64, 1, 8, 8) in about [-1, 1]

Architecture (preset ``"digits-small"``): SongUNet, model_channels 32, channel_mult [1, 2]
(8x8 and 4x4), one residual block per level, self-attention at 4x4 (and in the 4x4 bottleneck),
embedding width 128, dropout 0.1, positional noise embedding; 749,089 parameters, 1.5 MB as
float16. Other presets: "digits-tiny" (68 k parameters, for tests), "digits-medium" (4.1 M,
for longer runs; ships nothing).

Reproduce the shipped weights (one CPU thread; 2500 steps took 15 min 20 s wall on a shared
2-core machine):

    fastdistill train-teacher --data digits --arch digits-small \
        --out fastdistill/assets/digits_teacher.safetensors \
        --steps 2500 --batch-size 128 --lr 2e-3 --seed 0 --weights-dtype float16 --threads 1

(Adam, betas (0.9, 0.999), 100 warm-up steps, cosine decay, EMA half-life 5 % of the samples
seen, EDM lognormal sigmas P_mean -1.2, P_std 1.2; final EDM loss ~0.38.) A 600-step pilot at
lr 2e-3 reached FID 0.131 (Heun 18), at lr 1e-3 0.144.

Quality, digits feature space (``compute_metrics(..., extractor="digits")``), 1000 samples
(seed 1, random classes) against all 1797 digits; "acc" is how often the shipped digits
classifier reads the requested class:

    sampler       NFE    FID     KID     precision recall  acc
    Heun  18 st.   35   0.081   0.0016    0.889    0.909   0.980
    Heun   8 st.   15   0.104   0.0043    0.744    0.963   0.970
    Heun   4 st.    7   1.247   0.1539    0.155    0.975   0.796
    Heun   2 st.    3  10.67    1.3006    0.002    0.299   0.066   (the correction at sigma_min spoils it)
    Euler 18 st.   18   0.148   0.0093    0.940    0.798   0.998
    Euler  8 st.    8   0.288   0.0239    0.979    0.611   1.000
    Euler  4 st.    4   0.563   0.0457    0.983    0.301   1.000
    Euler  2 st.    2   4.733   0.4570    0.080    0.000   1.000
    Euler  1 st.    1   4.749   0.4591    0.077    0.000   1.000   (= Heun 1 step: the class mean)
    baselines: 1000 data digits vs all 1797 (overlapping sets) 0.021; one half of the
    digits vs the other (899 vs 898) 0.152; clipped Gaussian noise 10.39.

This table's protocol (random classes, against all digits) differs from the main job's
(``fastdistill distill``: class-balanced labels, n = 898 against the held-out half, mean of 3
draws), where the same teacher at Heun 18 steps scores 0.080 +- 0.006 (docs/digits.md).

Measured with (after ``torch.set_num_threads(1)``)::

    net = load_digits_teacher(); X = load_dataset("digits").data
    s, lab = sample(net, 1000, seed=1, num_steps=18, solver="heun", batch_size=1000, return_labels=True)
    compute_metrics(s, X)

``train-teacher`` also trains on the 2-D toys (preset ``"mlp"``, an ``MLPDenoiser``; chosen
automatically for vector data) and on user data (.npy / .npz / image folders through
:func:`fastdistill.data.load_dataset`); the U-Net presets adapt resolution, channels and
label_dim to the data.
"""
from __future__ import annotations

import copy
import math
import os
import time
from importlib import resources
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

__all__ = [
    "ARCH_PRESETS",
    "ASSET_NAME",
    "SHIPPED_TRAINING",
    "build_teacher_for_data",
    "train_digits_teacher",
    "load_digits_teacher",
    "digits_teacher_path",
]

ASSET_NAME = "digits_teacher.safetensors"

#: Network presets for ``train-teacher --arch``. U-Net presets are EDMPrecond keyword
#: arguments without the data-dependent ones (img_resolution, img_channels, label_dim).
ARCH_PRESETS: Dict[str, Dict[str, Any]] = {
    # the shipped digits teacher
    "digits-small": dict(model_type="SongUNet", model_channels=32, channel_mult=[1, 2], num_blocks=1,
                         attn_resolutions=[4], channel_mult_emb=4, dropout=0.1, sigma_data=0.5),
    # a bigger variant (4.1 M parameters) for longer runs
    "digits-medium": dict(model_type="SongUNet", model_channels=64, channel_mult=[1, 2], num_blocks=2,
                          attn_resolutions=[4], channel_mult_emb=4, dropout=0.1, sigma_data=0.5),
    # tiny, for tests and smoke runs
    "digits-tiny": dict(model_type="SongUNet", model_channels=16, channel_mult=[1, 1], num_blocks=1,
                        attn_resolutions=[], channel_mult_emb=2, dropout=0.0, sigma_data=0.5),
    # vector data (the 2-D toys): a residual MLP; sigma_data is measured on the data
    "mlp": dict(width=128, depth=3, emb_dim=64),
}
DEFAULT_ARCH = {"image": "digits-small", "vector": "mlp"}

#: Settings of the run that produced the shipped weights (see the module docstring); also
#: the defaults of ``train-teacher``.
SHIPPED_TRAINING: Dict[str, Any] = dict(arch="digits-small", steps=2500, batch_size=128, lr=2e-3, seed=0,
                                        lr_warmup_steps=100, lr_decay="cosine")


def _is_image_data(source) -> bool:
    return len(tuple(source.data_shape)) == 3


def build_teacher_for_data(arch: Optional[str], source, *, conditional: bool = True, seed: int = 0) -> nn.Module:
    """A freshly initialised (seeded) network of preset ``arch`` fitted to ``source``'s shape
    and labels. ``arch=None`` picks the default for the data kind (U-Net for images, MLP for
    vectors). ``conditional=False`` ignores the data's labels."""
    kind = "image" if _is_image_data(source) else "vector"
    arch = arch or DEFAULT_ARCH[kind]
    if arch not in ARCH_PRESETS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCH_PRESETS)}")
    label_dim = int(source.label_dim or 0) if conditional else 0
    kw = dict(ARCH_PRESETS[arch])
    # the networks draw their initial weights from torch's global RNG: seed it, then restore it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _build(arch, kind, kw, source, label_dim, seed)


def _build(arch, kind, kw, source, label_dim, seed):
    if arch == "mlp":
        from .mlp import MLPDenoiser

        sd = float(source.estimate_sigma_data(seed=seed))
        return MLPDenoiser(data_shape=tuple(source.data_shape), label_dim=label_dim, sigma_data=sd, **kw)
    if kind != "image":
        raise ValueError(f"arch {arch!r} is a U-Net for (C, H, W) images but the data have shape "
                         f"{tuple(source.data_shape)}; use --arch mlp for vector data")
    from .precond import EDMPrecond

    C, H, W = (int(s) for s in source.data_shape)
    if H != W:
        raise ValueError(f"the U-Net presets need square images, got {H}x{W}")
    levels = len(kw["channel_mult"])
    if H % (1 << (levels - 1)):
        raise ValueError(f"arch {arch!r} downsamples {levels - 1} times; image side {H} must be divisible "
                         f"by {1 << (levels - 1)}")
    return EDMPrecond(img_resolution=H, img_channels=C, label_dim=label_dim, **kw)


def _check_out_path(out_path: Union[str, os.PathLike]) -> str:
    out_path = os.fspath(out_path)
    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output directory does not exist: {parent}")
    return out_path


def train_digits_teacher(
    out_path: Optional[Union[str, os.PathLike]] = None,
    steps: int = SHIPPED_TRAINING["steps"],
    batch_size: int = SHIPPED_TRAINING["batch_size"],
    lr: float = SHIPPED_TRAINING["lr"],
    seed: int = 0,
    *,
    data: Union[str, os.PathLike, Any] = "digits",
    arch: Optional[str] = None,
    conditional: bool = True,
    lr_warmup_steps: int = SHIPPED_TRAINING["lr_warmup_steps"],
    lr_decay: str = SHIPPED_TRAINING["lr_decay"],
    weights_dtype: str = "float32",
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
    data_kwargs: Optional[dict] = None,
    **train_kwargs,
):
    """Train a teacher with :func:`fastdistill.teachers.train_teacher` (EDM loss, Adam, EMA)
    and optionally save its EMA weights; returns the ``TrainResult`` (``.teacher`` is the EMA
    network, ``.path`` the file written).

    ``data``: a dataset name or path for ``load_dataset`` (digits, the 2-D toys, .npy/.npz,
    image folders) or a ``DataSource``. ``arch``: an :data:`ARCH_PRESETS` name (None = the
    default for the data kind). ``weights_dtype``: "float32" or "float16" storage of the saved
    weights (the loaded network is float32 either way). Other keyword arguments go to
    ``train_teacher`` (grad_clip, ema_halflife, P_mean, P_std, ...).
    """
    from fastdistill.data import DataSource, load_dataset

    from .checkpoint import save_teacher
    from .training import train_teacher

    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    if weights_dtype not in ("float32", "float16"):
        raise ValueError(f"weights_dtype must be 'float32' or 'float16', got {weights_dtype!r}")
    if out_path is not None:
        out_path = _check_out_path(out_path)
    source = data if isinstance(data, DataSource) else load_dataset(data, **(data_kwargs or {}))
    net = build_teacher_for_data(arch, source, conditional=conditional, seed=seed)
    if device is not None:
        net = net.to(device)
    t0 = time.perf_counter()
    result = train_teacher(net, source, steps=int(steps), batch_size=int(batch_size), lr=float(lr), seed=int(seed),
                           lr_warmup_steps=int(min(lr_warmup_steps, steps)), lr_decay=lr_decay, device=device,
                           progress=progress, **train_kwargs)
    seconds = time.perf_counter() - t0
    result.config.update(arch=arch or ("mlp" if not _is_image_data(source) else DEFAULT_ARCH["image"]),
                         data=getattr(source, "name", str(data)), conditional=bool(conditional),
                         weights_dtype=weights_dtype, train_seconds=round(seconds, 1),
                         torch_threads=torch.get_num_threads())
    if out_path is not None:
        to_save = result.teacher
        if weights_dtype == "float16":
            to_save = copy.deepcopy(result.teacher).to(torch.float16)
        result.path = save_teacher(to_save, out_path, extra={"training": result.config})
    return result


def digits_teacher_path():
    """The shipped weights as an ``importlib.resources`` Traversable (package data)."""
    return resources.files("fastdistill").joinpath("assets", ASSET_NAME)


def load_digits_teacher(device="cpu") -> nn.Module:
    """The shipped class-conditional digits teacher: an ``EDMPrecond`` (Denoiser) for
    (B, 1, 8, 8) images in [-1, 1], label_dim 10, float32, eval mode, requires_grad False."""
    from .checkpoint import CheckpointError, load_safetensors_teacher

    ref = digits_teacher_path()
    if not ref.is_file():
        raise FileNotFoundError(
            f"shipped digits teacher not found in package data ({ref}); reinstall fastdistill or retrain it "
            f"with: fastdistill train-teacher --data digits --out fastdistill/assets/{ASSET_NAME}")
    with resources.as_file(ref) as p:
        net = load_safetensors_teacher(p, device=device)
    if net.img_resolution != 8 or net.img_channels != 1:
        raise CheckpointError(f"{ref}: not a digits teacher (resolution {net.img_resolution}, "
                              f"channels {net.img_channels})")
    return net
