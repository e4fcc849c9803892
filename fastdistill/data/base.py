"""Data sources: what the teacher trainer, the distillation engine and the metrics draw from.

Two kinds, one interface (`DataSource.sample(n, generator) -> (x, class_labels)`):

- `ToyDataset`: an infinite 2-D distribution; every call draws fresh points.
- `ArrayDataset`: a finite set of samples held as a float32 tensor (N, *data_shape), also a
  `torch.utils.data.Dataset` (item i -> (x_i, one-hot label or an empty tensor)).

`class_labels` is a float32 one-hot (n, label_dim) tensor, or None for unlabelled data.
Image data are (N, C, R, R) in [-1, 1] (docs/algorithms.md section 0); vector data are (N, d).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ["DataSource", "ToyDataset", "ArrayDataset"]


class DataSource:
    """Common interface: `data_shape`, `label_dim`, `img_channels`, `img_resolution`, `sample`."""

    name: str = "data"
    data_shape: Tuple[int, ...] = ()
    label_dim: int = 0

    @property
    def img_channels(self) -> int:
        return self.data_shape[0] if len(self.data_shape) == 3 else int(torch.Size(self.data_shape).numel())

    @property
    def img_resolution(self) -> int:
        return self.data_shape[-1] if len(self.data_shape) == 3 else 1

    def sample(self, n: int, generator: Optional[torch.Generator] = None):
        raise NotImplementedError

    def estimate_sigma_data(self, n: int = 10_000, seed: int = 0) -> float:
        """Per-coordinate standard deviation of the data (EDM's sigma_data)."""
        x, _ = self.sample(n, torch.Generator().manual_seed(seed))
        return float(x.double().std())


class ToyDataset(DataSource):
    """An infinite distribution given by a sampling function `fn(n, generator) -> (n, d)`."""

    def __init__(self, name: str, fn: Callable[[int, Optional[torch.Generator]], torch.Tensor], dim: int = 2):
        self.name = name
        self._fn = fn
        self.data_shape = (int(dim),)
        self.label_dim = 0

    def sample(self, n: int, generator: Optional[torch.Generator] = None):
        n = int(n)
        if n < 0:
            raise ValueError("n must be non-negative")
        x = self._fn(n, generator).to(torch.float32)
        return x, None

    def __repr__(self) -> str:
        return f"ToyDataset({self.name!r}, data_shape={self.data_shape})"


class ArrayDataset(DataSource, Dataset):
    """A finite dataset in memory: data (N, *data_shape) float32, optional integer labels (N,)."""

    def __init__(self, data: torch.Tensor, labels: Optional[torch.Tensor] = None, *, label_dim: Optional[int] = None,
                 name: str = "array", class_names: Optional[Sequence[str]] = None):
        if not torch.is_tensor(data) or not data.is_floating_point():
            raise TypeError("data must be a floating-point tensor")
        if data.ndim < 2 or data.shape[0] == 0:
            raise ValueError(f"data must be a non-empty (N, ...) tensor, got shape {tuple(data.shape)}")
        if not torch.isfinite(data).all():
            raise ValueError(f"{name}: data contain NaN or infinite values")
        self.data = data.to(torch.float32).contiguous()
        self.data_shape = tuple(self.data.shape[1:])
        self.name = name
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.is_floating_point():
                if not torch.equal(labels, labels.round()):
                    raise ValueError(f"{name}: labels must be integer class indices")
            labels = labels.long().reshape(-1)
            if labels.shape[0] != self.data.shape[0]:
                raise ValueError(f"{name}: {labels.shape[0]} labels for {self.data.shape[0]} samples")
            if (labels < 0).any():
                raise ValueError(f"{name}: labels must be non-negative class indices")
            n_cls = int(labels.max()) + 1
            if label_dim is None:
                label_dim = n_cls
            elif n_cls > label_dim:
                raise ValueError(f"{name}: label {n_cls - 1} does not fit label_dim {label_dim}")
            self.labels = labels
            self.label_dim = int(label_dim)
        else:
            self.labels = None
            self.label_dim = 0
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return self.data.shape[0]

    def _onehot(self, idx: torch.Tensor) -> Optional[torch.Tensor]:
        if self.labels is None:
            return None
        return torch.nn.functional.one_hot(self.labels[idx], self.label_dim).to(torch.float32)

    def __getitem__(self, i):
        lab = self._onehot(torch.as_tensor(i)) if self.labels is not None else torch.zeros(0)
        return self.data[i], lab

    def sample(self, n: int, generator: Optional[torch.Generator] = None):
        """n samples drawn uniformly with replacement (fresh indices each call)."""
        n = int(n)
        if n < 0:
            raise ValueError("n must be non-negative")
        idx = torch.randint(len(self), (n,), generator=generator)
        return self.data[idx], self._onehot(idx)

    def __repr__(self) -> str:
        return f"ArrayDataset({self.name!r}, n={len(self)}, data_shape={self.data_shape}, label_dim={self.label_dim})"
