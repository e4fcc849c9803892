"""Image and array datasets: scikit-learn digits, .npy/.npz arrays, image folders.

All image data end up as float32 (N, C, R, R) in [-1, 1], with optional integer class labels.

Digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no download),
grey levels 0..16 mapped linearly to [-1, 1], shape (N, 1, 8, 8). The EDM networks downsample
by 2 per extra entry of `channel_mult`, so 8x8 supports channel_mult up to three levels
(8 -> 4 -> 2); `resolution=16` (or 32) gives a bilinearly upsampled copy for deeper
networks or for architectures tuned to 16x16 (the test-vector networks are 16x16).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from fastdistill.data.base import ArrayDataset

__all__ = ["digits", "from_array", "load_array_file", "load_image_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _resize(x: torch.Tensor, resolution: Optional[int]) -> torch.Tensor:
    if resolution is None or x.shape[-1] == resolution:
        return x
    if int(resolution) < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    mode = "bilinear" if resolution > x.shape[-1] else "area"
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return torch.nn.functional.interpolate(x, size=(int(resolution),) * 2, mode=mode, **kw).clamp(-1, 1)


def digits(resolution: Optional[int] = None, labels: bool = True) -> ArrayDataset:
    """scikit-learn's 8x8 digits in [-1, 1] as (1797, 1, 8, 8), labels 0..9 (label_dim 10).

    resolution: None/8 keeps 8x8; larger values upsample bilinearly (e.g. 16).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from exc
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0
    x = _resize(x, resolution)
    y = torch.as_tensor(d.target, dtype=torch.long) if labels else None
    return ArrayDataset(x, y, label_dim=10 if labels else None, name="digits",
                        class_names=[str(i) for i in range(10)] if labels else None)


def _to_nchw(a: np.ndarray, name: str) -> np.ndarray:
    """Accept (N, d) vectors, (N, H, W) grey, (N, C, H, W) or (N, H, W, C) with C in {1, 3, 4}."""
    if a.ndim == 2:
        return a
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        if a.shape[1] in (1, 2, 3, 4):
            return a
        if a.shape[-1] in (1, 2, 3, 4):
            return np.transpose(a, (0, 3, 1, 2))
        raise ValueError(
            f"{name}: cannot tell the channel axis of shape {a.shape}; expected (N, C, H, W) or "
            "(N, H, W, C) with C in 1..4"
        )
    raise ValueError(f"{name}: expected an array of shape (N, d), (N, H, W), (N, C, H, W) or (N, H, W, C); got {a.shape}")


def from_array(
    data,
    labels=None,
    *,
    value_range: Optional[Tuple[float, float]] = None,
    resolution: Optional[int] = None,
    name: str = "array",
    label_dim: Optional[int] = None,
) -> ArrayDataset:
    """Build a dataset from an in-memory array or tensor.

    Shapes: (N, d) vector data are kept as they are (any values, must be finite). Images
    (N, H, W), (N, C, H, W) or (N, H, W, C) must be square (or be resized with `resolution`)
    and are mapped to [-1, 1]:
    - uint8: 0..255 -> [-1, 1];
    - float with `value_range=(lo, hi)`: lo..hi -> [-1, 1];
    - float without value_range: must already lie in [-1, 1] (an error says otherwise).
    """
    if torch.is_tensor(data):
        data = data.detach().cpu().numpy()
    a = np.asarray(data)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{name}: data must be numeric, got dtype {a.dtype}")
    if a.ndim < 2 or a.shape[0] == 0 or a.size == 0:
        raise ValueError(f"{name}: need a non-empty array with a leading sample axis, got shape {a.shape}")
    is_uint8 = a.dtype == np.uint8
    a = _to_nchw(a, name)
    x = torch.as_tensor(np.ascontiguousarray(a)).to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: data contain NaN or infinite values")
    if value_range is not None:
        lo, hi = map(float, value_range)
        if not hi > lo:
            raise ValueError(f"{name}: value_range must be (lo, hi) with hi > lo, got {value_range}")
        if x.min() < lo - 1e-6 * (hi - lo) or x.max() > hi + 1e-6 * (hi - lo):
            raise ValueError(f"{name}: values [{float(x.min()):g}, {float(x.max()):g}] fall outside value_range {value_range}")
        x = (x - lo) / (hi - lo) * 2.0 - 1.0
    elif x.ndim == 4:
        if is_uint8:
            x = x / 127.5 - 1.0
        elif x.min() < -1.0 - 1e-6 or x.max() > 1.0 + 1e-6:
            raise ValueError(
                f"{name}: float images must lie in [-1, 1] (values span [{float(x.min()):g}, {float(x.max()):g}]); "
                "pass value_range=(0, 1) or (0, 255) to rescale, or store uint8"
            )
    if x.ndim == 4:
        if x.shape[-1] != x.shape[-2] and resolution is None:
            raise ValueError(f"{name}: images must be square, got {x.shape[-2]}x{x.shape[-1]}; pass resolution= to resize")
        x = x.clamp(-1.0, 1.0).to(torch.float32)
        if resolution is not None:
            x = _resize(x, int(resolution))
    elif resolution is not None:
        raise ValueError(f"{name}: resolution applies to images, not to vector data of shape {tuple(x.shape)}")
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels))
        if y.ndim == 2:  # one-hot
            y = y.argmax(1)
    return ArrayDataset(x.to(torch.float32), y, name=name, label_dim=label_dim)


_DATA_KEYS = ("x", "data", "images", "image", "arr_0", "X")
_LABEL_KEYS = ("labels", "label", "y", "targets", "classes")


def load_array_file(
    path: Union[str, os.PathLike],
    *,
    key: Optional[str] = None,
    labels_key: Optional[str] = None,
    **kw,
) -> ArrayDataset:
    """Load a .npy (data only) or .npz (data plus optional labels) file; see `from_array`.

    In an .npz the data are `key` or the first of x/data/images/image/arr_0/X present; labels
    are `labels_key` or the first of labels/label/y/targets/classes present (optional).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = kw.pop("name", path.name)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if labels_key is not None or key is not None:
            raise ValueError(".npy files hold one array: key/labels_key apply to .npz only")
        try:
            a = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path}: not a plain numeric .npy array ({exc})") from exc
        return from_array(a, None, name=name, **kw)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            k = key if key is not None else next((c for c in _DATA_KEYS if c in keys), None)
            if k is None:
                if len(keys) == 1:
                    k = keys[0]
                else:
                    raise ValueError(f"{path}: cannot tell which array holds the data among {keys}; pass key=")
            if k not in keys:
                raise KeyError(f"{path}: no array {k!r}; arrays are {keys}")
            lk = labels_key if labels_key is not None else next((c for c in _LABEL_KEYS if c in keys), None)
            if lk is not None and lk not in keys:
                raise KeyError(f"{path}: no array {lk!r}; arrays are {keys}")
            return from_array(z[k], z[lk] if lk is not None else None, name=name, **kw)
    raise ValueError(f"{path}: unsupported array file type {suffix!r} (use .npy or .npz)")


def _list_images(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image_folder(
    folder: Union[str, os.PathLike],
    *,
    resolution: Optional[int] = None,
    channels: Optional[int] = None,
    labels: Optional[bool] = None,
    max_images: Optional[int] = None,
) -> ArrayDataset:
    """Read every image under `folder` (recursively) into (N, C, R, R) in [-1, 1].

    - Labels: when the folder holds only sub-folders with images (ImageFolder layout), each
      sub-folder is a class (sorted by name); `labels=False` ignores them, `labels=True`
      demands that layout.
    - channels: 1 (grey) or 3 (RGB); by default 1 if every image is greyscale, else 3.
    - resolution: when given, each image is centre-cropped to a square and resized
      (bicubic); otherwise all images must already be square and of one size.
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise ImportError("image folders need Pillow: pip install pillow") from exc
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    files = _list_images(folder)
    if not files:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    if max_images is not None:
        files = files[: int(max_images)]
    subdirs = sorted({p.relative_to(folder).parts[0] for p in files if len(p.relative_to(folder).parts) > 1})
    layout_ok = bool(subdirs) and all(len(p.relative_to(folder).parts) > 1 for p in files)
    if labels is True and not layout_ok:
        raise ValueError(f"{folder}: labels=True needs one sub-folder per class with every image inside one")
    use_labels = layout_ok if labels is None else bool(labels)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")

    imgs = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                imgs.append(im.copy())
        except Exception as exc:
            raise ValueError(f"cannot read image {p}: {exc}") from exc
    if channels is None:
        channels = 1 if all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in imgs) else 3
    arrays = []
    size = None
    for p, im in zip(files, imgs):
        im = im.convert("L" if channels == 1 else "RGB")
        if resolution is not None:
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((int(resolution),) * 2, Image.BICUBIC)
        else:
            if im.size[0] != im.size[1]:
                raise ValueError(f"{p}: image is {im.size[0]}x{im.size[1]}, not square; pass resolution= to crop and resize")
            if size is None:
                size = im.size
            elif im.size != size:
                raise ValueError(f"{p}: size {im.size} differs from {size}; pass resolution= to resize all images")
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = torch.as_tensor(np.stack(arrays)).to(torch.float32) / 127.5 - 1.0
    y = None
    names = None
    if use_labels:
        names = subdirs
        index = {n: i for i, n in enumerate(subdirs)}
        y = torch.tensor([index[p.relative_to(folder).parts[0]] for p in files], dtype=torch.long)
    return ArrayDataset(x, y, name=folder.name, label_dim=len(names) if names else None, class_names=names)
