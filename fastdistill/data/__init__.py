"""Built-in and user datasets behind one entry point, `load_dataset`.

    load_dataset("8gaussians")              # 2-D toys: 8gaussians, 25gaussians, checkerboard, swissroll
    load_dataset("digits")                  # scikit-learn 8x8 digits, (N, 1, 8, 8) in [-1, 1], 10 classes
    load_dataset("digits", resolution=16)   # bilinearly upsampled to 16x16
    load_dataset("images.npz")              # .npy / .npz arrays (see from_array for the rules)
    load_dataset("my_images/")              # a folder of images (PIL), sub-folders = classes

Every result is a `DataSource` with `sample(n, generator) -> (x, one-hot labels or None)`,
`data_shape`, `label_dim`, `img_channels`, `img_resolution`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from fastdistill.data.base import ArrayDataset, DataSource, ToyDataset
from fastdistill.data.images import digits, from_array, load_array_file, load_image_folder
from fastdistill.data.toys import TOYS, checkerboard, eight_gaussians, swiss_roll, twenty_five_gaussians

__all__ = [
    "load_dataset",
    "DataSource",
    "ToyDataset",
    "ArrayDataset",
    "digits",
    "from_array",
    "load_array_file",
    "load_image_folder",
    "eight_gaussians",
    "twenty_five_gaussians",
    "checkerboard",
    "swiss_roll",
    "BUILTIN_DATASETS",
]

_ALIASES = {
    "8gaussians": "8gaussians", "eight_gaussians": "8gaussians", "8-gaussians": "8gaussians",
    "25gaussians": "25gaussians", "twenty_five_gaussians": "25gaussians",
    "checkerboard": "checkerboard",
    "swissroll": "swissroll", "swiss_roll": "swissroll", "swiss-roll": "swissroll",
    "digits": "digits", "sklearn_digits": "digits",
}
BUILTIN_DATASETS = ("8gaussians", "25gaussians", "checkerboard", "swissroll", "digits")


def load_dataset(name_or_path: Union[str, os.PathLike], **kwargs) -> DataSource:
    """Open a built-in dataset by name or user data by path.

    Keyword arguments go to the specific loader: toys take their shape parameters
    (e.g. `std=`, `radius=`, `noise=`), digits take `resolution=`, `labels=`; array files take
    `key=`, `labels_key=`, `value_range=`, `resolution=`; image folders take `resolution=`,
    `channels=`, `labels=`, `max_images=`.
    """
    if isinstance(name_or_path, str) and name_or_path.lower() in _ALIASES and not Path(name_or_path).exists():
        name = _ALIASES[name_or_path.lower()]
        if name == "digits":
            return digits(**kwargs)
        return TOYS[name](**kwargs)
    path = Path(name_or_path)
    if path.is_dir():
        return load_image_folder(path, **kwargs)
    if path.is_file():
        if path.suffix.lower() in (".npy", ".npz"):
            return load_array_file(path, **kwargs)
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .npy, .npz or a folder of images")
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) nor an existing file or folder"
    )
