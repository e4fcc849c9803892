"""Sample quality against a fixed reference set: what every evaluation in fastdistill measures.

Every model is scored with the same number of samples ``n`` against the same reference set,
and the data-versus-data score at that ``n`` (the *baseline*) is the metric's noise floor. For
a finite dataset (digits: 1797 images) the data are split once (fixed seed) into two halves:
the *reference* half every model is compared with, and the *held-out* half that gives the
baseline (``n`` is capped at the held-out size, 898 for digits; FID is biased upwards at small
``n``, so only compare numbers measured at the same ``n``). For an infinite toy distribution,
reference and baseline are independent draws of ``n`` points.

- images: FID, KID, precision and recall (torch-fidelity) in the feature space of the shipped
  digits classifier (``extractor="digits"``; ``"inception"`` needs local weights);
- vector data (the 2-D toys): sliced Wasserstein-2 distance and MMD (RBF kernel).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = ["EvalError", "ReferenceData", "reference_data", "quality", "DIGITS_N"]

#: samples per FID on digits: the size of the held-out half of the 1797 images
DIGITS_N = 898
SPLIT_SEED = 20240601


class EvalError(ValueError):
    """A bad evaluation input (missing checkpoint, shape mismatch, ...)."""


# ----------------------------------------------------------------------------- reference data
@dataclass
class ReferenceData:
    name: str
    reference: torch.Tensor  # what every model is compared with
    heldout: Optional[torch.Tensor]  # the baseline set (same n as the models); None = draw fresh (toys)
    kind: str  # "image" | "vector"
    source: Any = None

    @property
    def data_shape(self) -> tuple:
        return tuple(self.reference.shape[1:])

    def max_n(self) -> Optional[int]:
        return None if self.heldout is None else int(self.heldout.shape[0])

    def baseline_set(self, n: int) -> torch.Tensor:
        if self.heldout is not None:
            return self.heldout[:n]
        x, _ = self.source.sample(n, torch.Generator().manual_seed(SPLIT_SEED + 1))
        return x.float()


_REF_CACHE: dict = {}


def reference_data(data="digits", n: Optional[int] = None) -> ReferenceData:
    """The reference / held-out split of a dataset (a ``load_dataset`` name or path, or a DataSource).

    Finite data are permuted with a fixed seed and halved (reference = first half). Infinite
    toys: ``n`` fresh reference points (default 4096) and a fresh baseline draw of the same n.
    """
    from ..data import DataSource, load_dataset

    key = (data, n) if isinstance(data, (str, os.PathLike)) else None
    if key is not None and key in _REF_CACHE:
        return _REF_CACHE[key]
    src = data if isinstance(data, DataSource) else load_dataset(data)
    name = getattr(src, "name", str(data))
    kind = "image" if len(tuple(src.data_shape)) == 3 else "vector"
    if hasattr(src, "data") and torch.is_tensor(getattr(src, "data")):
        x = src.data.float()
        if x.shape[0] < 4:
            raise EvalError(f"dataset {name!r} has {x.shape[0]} samples; need at least 4 to split into reference/held-out")
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
        half = (x.shape[0] + 1) // 2
        ref = ReferenceData(name, x[perm[:half]], x[perm[half:]], kind, src)
    else:
        m = int(n or 4096)
        xr, _ = src.sample(m, torch.Generator().manual_seed(SPLIT_SEED))
        ref = ReferenceData(name, xr.float(), None, kind, src)
    if key is not None:
        _REF_CACHE[key] = ref
    return ref


def _check_shape(x: torch.Tensor, ref: ReferenceData, what: str) -> None:
    if tuple(x.shape[1:]) != ref.data_shape:
        raise EvalError(f"{what} produces samples of shape {tuple(x.shape[1:])} but the data {ref.name!r} have shape "
                        f"{ref.data_shape}; evaluate against data of the model's shape (--data)")


def quality(x: torch.Tensor, ref: ReferenceData, *, full: bool = True, extractor: str = "digits", seed: int = 0) -> dict:
    """Metrics of samples ``x`` against ``ref.reference``.

    Images: ``fid`` (and with ``full`` also ``kid_mean``, ``kid_std``, ``precision``, ``recall``).
    Vectors: ``sw`` (sliced Wasserstein-2) and with ``full`` also ``mmd`` (RBF, unbiased).
    """
    x = x.detach().float().cpu()
    _check_shape(x, ref, "the model")
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    out: dict = {}
    if bad.any():
        out["nonfinite_samples"] = int(bad.sum())
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    if ref.kind == "image":
        from .fidelity import compute_metrics

        n = min(x.shape[0], ref.reference.shape[0])
        if n < 2:
            raise EvalError(f"need at least 2 samples, got {x.shape[0]}")
        # KID on 50 random halves: subsets of all n samples would be n identical permutations
        # (a zero spread, and 10x the time at n=898)
        m = compute_metrics(x, ref.reference, extractor=extractor, fid=True, kid=full, prc=full,
                            kid_subset_size=max(1, min(1000, n // 2)) if full else None, kid_subsets=50,
                            prc_neighborhood=min(3, n - 1), seed=seed)
        out.update({k: m[k] for k in ("fid", "kid_mean", "kid_std", "precision", "recall") if k in m})
    else:
        from .distances import mmd_rbf, sliced_wasserstein

        out["sw"] = float(sliced_wasserstein(x, ref.reference, seed=seed))
        if full:
            out["mmd"] = float(mmd_rbf(x[:4096], ref.reference[:4096], seed=seed))
    return out
