"""Offline FID / KID / precision-recall with torch-fidelity, on in-memory [-1, 1] tensors.

Two feature spaces:

- ``extractor="digits"``: the 64-d penultimate layer of the small digits CNN shipped in the
  package (``fastdistill.metrics.digits_classifier``; 98.3 % held-out accuracy), registered with
  torch-fidelity as ``"fastdistill-digits"``. For scikit-learn's 8x8 digits (or 16x16, 32x32...:
  side a multiple of 8, average-pooled to 8x8). Numbers are comparable only with other numbers in
  the same feature space; they are not Inception FIDs.
- ``extractor="inception"``: standard Inception-v3 FID (torch-fidelity's ``inception-v3-compat``,
  the TF-FID port) from a LOCAL weights file. Nothing is ever downloaded: the file is taken from
  ``inception_weights=``, else ``$FASTDISTILL_INCEPTION_WEIGHTS``, else torch hub's checkpoint
  cache (``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth``, where
  torch-fidelity itself would cache it); if none exists, :class:`InceptionWeightsNotFoundError`
  is raised before torch-fidelity is called. The file is checked with
  ``torch.load(weights_only=True)`` first, because torch-fidelity loads it with
  ``weights_only=False``.

Usage::

    from fastdistill.metrics.fidelity import compute_metrics
    m = compute_metrics(samples, reference)  # (N,1,8,8) tensors in [-1,1]
    m["fid"], m["kid_mean"], m["kid_std"], m["precision"], m["recall"]

or torch-fidelity directly (the extractor is registered on import of this module if
torch_fidelity is already imported, else by :func:`register_digits_extractor`)::

    import torch_fidelity, fastdistill.metrics.fidelity as fid
    fid.register_digits_extractor()  # idempotent; returns "fastdistill-digits"
    torch_fidelity.calculate_metrics(input1=fid.ImageTensorDataset(samples),
                                     input2=fid.ImageTensorDataset(reference),
                                     feature_extractor="fastdistill-digits", fid=True, kid=True,
                                     prc=True, kid_subset_size=500, cuda=False, save_cpu_ram=True)

Images are quantised to uint8 exactly as when saving PNGs (``round((x + 1) * 127.5)``, clamped),
since torch-fidelity's extractors take uint8 CHW images. Precision is the fraction of ``samples``
inside the reference manifold, recall the fraction of ``reference`` inside the samples' manifold
(k-NN balls, k = ``prc_neighborhood``). FID is biased upwards at small N (digits, halves of
the data: 0.09 at N=899, ~1.3 at N=150): compare models at equal N. KID is unbiased, so two
draws from one set give ~0 (slightly negative when the draws overlap). The torch-fidelity class
is ``fastdistill.metrics.fidelity.DigitsFeatureExtractor``, built on first access.

Requires the evaluation extras ``torch-fidelity`` (and ``scikit-learn`` for the digits data).
torch-fidelity is imported on first use, not on import (it pulls in torchvision, seconds of
import time), so ``import fastdistill.metrics`` stays cheap and works without the extras; a
missing extra raises an ImportError with the install line.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from fastdistill.metrics.digits_classifier import load_digits_classifier


__all__ = [
    "compute_metrics",
    "extract_features",
    "ImageTensorDataset",
    "register_digits_extractor",
    "InceptionWeightsNotFoundError",
    "resolve_inception_weights",
    "DIGITS_EXTRACTOR",
    "INCEPTION_EXTRACTOR",
]

DIGITS_EXTRACTOR = "fastdistill-digits"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "FASTDISTILL_INCEPTION_WEIGHTS"
_INSTALL_HINT = "pip install 'torch-fidelity>=0.4' scikit-learn  (or: pip install 'fastdistill[eval]')"


def _tf():
    """torch_fidelity, imported on first use (it pulls in torchvision: seconds of import time)."""
    try:
        import torch_fidelity
    except ImportError as e:
        raise ImportError(f"fastdistill.metrics.fidelity needs torch-fidelity: {_INSTALL_HINT}") from e
    return torch_fidelity


class InceptionWeightsNotFoundError(FileNotFoundError):
    """No local Inception-v3 weights file; fastdistill never downloads them."""


# --------------------------------------------------------------------------------------------
# inputs


class ImageTensorDataset(Dataset):
    """In-memory images as torch-fidelity input: yields uint8 (C, H, W) tensors.

    ``images``: (N, C, H, W) or (N, H, W) float tensor/array in ``value_range`` (default [-1, 1];
    values outside are clamped, NaN/inf rejected), or uint8 in [0, 255] (used as is).
    ``channels``: force 1 (grey, mean of RGB) or 3 (grey repeated) channels; None keeps C.
    """

    def __init__(self, images, value_range: Sequence[float] = (-1.0, 1.0), channels: Optional[int] = None):
        x = images if torch.is_tensor(images) else torch.as_tensor(images)
        x = x.detach().cpu()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[0] == 0 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected a non-empty image batch (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            if not x.is_floating_point():
                raise TypeError(f"images must be floating point in {tuple(value_range)} or uint8, got {x.dtype}")
            x = x.to(torch.float64)
            if not torch.isfinite(x).all():
                raise ValueError("images contain NaN or infinite values")
            lo, hi = float(value_range[0]), float(value_range[1])
            if not hi > lo:
                raise ValueError(f"value_range must be (low, high) with high > low, got {tuple(value_range)}")
            x = ((x - lo) * (255.0 / (hi - lo))).round().clamp_(0, 255).to(torch.uint8)
        if channels is not None:
            if channels not in (1, 3):
                raise ValueError(f"channels must be 1, 3 or None, got {channels}")
            if channels == 3 and x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            elif channels == 1 and x.shape[1] == 3:
                x = x.to(torch.float32).mean(dim=1, keepdim=True).round().to(torch.uint8)
        self.images = x.contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i) -> torch.Tensor:
        return self.images[i]


# --------------------------------------------------------------------------------------------
# the digits feature extractor


@functools.lru_cache(maxsize=None)
def _digits_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class DigitsFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor over the shipped digits classifier.

        Features: ``"64"`` (penultimate pre-activations; default for FID/KID/PRC) and
        ``"logits"`` (default for ISC). Input: uint8 (N, 1 or 3, H, H), H a multiple of 8.
        ``feature_extractor_weights_path``: other classifier weights (default: the package asset).
        """

        FEATURES = ("64", "logits")

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.net = load_digits_classifier(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return DigitsFeatureExtractor.FEATURES

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "64", "kid": "64", "prc": "64"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            if not (torch.is_tensor(x) and x.dtype == torch.uint8):
                raise TypeError("DigitsFeatureExtractor expects uint8 images (N, C, H, W); wrap float tensors in "
                                "ImageTensorDataset")
            feats, logits = self.net.features_and_logits(x)
            out = {"64": feats, "logits": logits}
            return tuple(out[name] for name in self.features_list)

    DigitsFeatureExtractor.__module__ = __name__
    DigitsFeatureExtractor.__qualname__ = "DigitsFeatureExtractor"
    return DigitsFeatureExtractor


def register_digits_extractor() -> str:
    """Register ``"fastdistill-digits"`` with torch-fidelity (idempotent) and return the name.

    Done automatically by :func:`compute_metrics`, :func:`extract_features`, and on import of
    this module when torch_fidelity is already imported; call it before using torch-fidelity
    directly otherwise.
    """
    tf = _tf()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = _digits_extractor_class()
    if FEATURE_EXTRACTORS_REGISTRY.get(DIGITS_EXTRACTOR) is not cls:
        if DIGITS_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY:  # stale entry, e.g. after a module reload
            FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR] = cls
        else:
            tf.register_feature_extractor(DIGITS_EXTRACTOR, cls)
    return DIGITS_EXTRACTOR


def __getattr__(name):  # the extractor class exists only once torch-fidelity is imported
    if name == "DigitsFeatureExtractor":
        _tf()
        return _digits_extractor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if sys.modules.get("torch_fidelity") is not None:  # already paid for: make the name usable right away
    register_digits_extractor()


# --------------------------------------------------------------------------------------------
# Inception weights: local only


def resolve_inception_weights(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Find a local Inception-v3 weights file (torch-fidelity format) or raise; never downloads.

    Order: ``path``, ``$FASTDISTILL_INCEPTION_WEIGHTS``, torch hub's checkpoint cache.
    """
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME
    if path is None:
        path = os.environ.get(INCEPTION_ENV) or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InceptionWeightsNotFoundError(f"Inception-v3 weights file not found: {p}")
        return p
    if hub_file.is_file():
        return hub_file
    raise InceptionWeightsNotFoundError(
        "Inception FID needs a local Inception-v3 weights file and fastdistill never downloads it. Get "
        f"{INCEPTION_FILENAME} (torch-fidelity's converted TF-FID weights, from "
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILENAME + ") and set "
        f"{INCEPTION_ENV}=/path/to/{INCEPTION_FILENAME} (fastdistill eval and Python), or place it at {hub_file}; "
        "from Python, the inception_weights= argument of compute_metrics / extract_features works too. For 8x8 digits use "
        "the digits extractor (fastdistill eval --extractor digits) instead."
    )


def _check_inception_weights(path: Path) -> None:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # not a plain tensor pickle: refuse (torch-fidelity would unpickle it unsafely)
        raise ValueError(
            f"{path} is not a loadable tensor state dict (torch.load weights_only=True failed: {e})"
        ) from e
    if not isinstance(state, dict) or "fc.weight" not in state or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ValueError(f"{path} does not look like torch-fidelity's inception-v3-compat state dict")


# --------------------------------------------------------------------------------------------
# public API


def _extractor_setup(extractor: str, inception_weights):
    if extractor == "digits":
        return register_digits_extractor(), 1, {}
    if extractor == "inception":
        p = resolve_inception_weights(inception_weights)
        _check_inception_weights(p)
        return INCEPTION_EXTRACTOR, 3, {"feature_extractor_weights_path": str(p)}
    raise ValueError(f"extractor must be 'digits' or 'inception', got {extractor!r}")


def _as_dataset(x, channels: int, value_range) -> ImageTensorDataset:
    if isinstance(x, ImageTensorDataset):
        if x.images.shape[1] == channels:
            return x
        return ImageTensorDataset(x.images, channels=channels)
    return ImageTensorDataset(x, value_range=value_range, channels=channels)


def _use_cuda(device) -> bool:
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def compute_metrics(
    samples,
    reference,
    extractor: str = "digits",
    inception_weights: Optional[Union[str, os.PathLike]] = None,
    kid_subset_size: Optional[int] = None,
    kid_subsets: int = 100,
    prc_neighborhood: int = 3,
    seed: int = 0,
    fid: bool = True,
    kid: bool = True,
    prc: bool = True,
    isc: bool = False,
    feature_layer: Optional[str] = None,
    batch_size: int = 256,
    device=None,
    value_range: Sequence[float] = (-1.0, 1.0),
    verbose: bool = False,
) -> dict:
    """FID, KID and precision/recall of ``samples`` against ``reference`` with torch-fidelity.

    ``samples``, ``reference``: (N, C, H, W) tensors/arrays in ``value_range`` (or uint8), or
    :class:`ImageTensorDataset`. ``extractor``: "digits" (shipped classifier, 64-d) or "inception"
    (needs a local weights file, see :func:`resolve_inception_weights`). ``kid_subset_size``
    defaults to min(1000, len(samples), len(reference)). ``seed`` drives KID's subset draws.
    ``feature_layer``: feature space for FID/KID/PR (default: "64" for digits, "2048" for
    inception; inception also offers "64", "192", "768", the small-sample FID variants).
    Returns a dict with ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``,
    ``f_score`` (those requested) and, with ``isc=True``, ``isc_mean``/``isc_std``
    (Inception Score in the chosen classifier's logits).
    """
    tf = _tf()
    if not (fid or kid or prc or isc):
        raise ValueError("nothing to compute: enable at least one of fid, kid, prc, isc")
    name, channels, extra = _extractor_setup(extractor, inception_weights)
    ds1 = _as_dataset(samples, channels, value_range)
    ds2 = _as_dataset(reference, channels, value_range)
    n1, n2 = len(ds1), len(ds2)
    if (fid or kid or prc) and min(n1, n2) < 2:
        raise ValueError(f"need at least 2 images per set, got {n1} samples and {n2} reference images")
    if kid_subset_size is None:
        kid_subset_size = min(1000, n1, n2)
    if kid and not 1 < kid_subset_size <= min(n1, n2):
        raise ValueError(f"kid_subset_size must be in [2, min(N1, N2) = {min(n1, n2)}], got {kid_subset_size}")
    if prc and not 0 < prc_neighborhood < min(n1, n2):
        raise ValueError(
            f"prc_neighborhood must be in [1, min(N1, N2) - 1 = {min(n1, n2) - 1}], got {prc_neighborhood}"
        )
    raw = tf.calculate_metrics(
        input1=ds1,
        input2=ds2 if (fid or kid or prc) else None,
        feature_extractor=name,
        fid=fid,
        kid=kid,
        prc=prc,
        isc=isc,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        prc_neighborhood=prc_neighborhood,
        rng_seed=seed,
        batch_size=batch_size,
        cuda=_use_cuda(device),
        cache=False,  # in-memory inputs; never write feature caches under $TORCH_HOME
        save_cpu_ram=True,  # no DataLoader worker processes
        datasets_download=False,
        verbose=verbose,
        feature_layer_fid=feature_layer,
        feature_layer_kid=feature_layer,
        feature_layer_prc=feature_layer,
        **extra,
    )
    keys = {
        "frechet_inception_distance": "fid",
        "kernel_inception_distance_mean": "kid_mean",
        "kernel_inception_distance_std": "kid_std",
        "precision": "precision",
        "recall": "recall",
        "f_score": "f_score",
        "inception_score_mean": "isc_mean",
        "inception_score_std": "isc_std",
    }
    return {keys[k]: float(v) for k, v in raw.items() if k in keys}


@torch.no_grad()
def extract_features(
    images,
    extractor: str = "digits",
    inception_weights: Optional[Union[str, os.PathLike]] = None,
    layer: Optional[str] = None,
    batch_size: int = 256,
    device=None,
    value_range: Sequence[float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Features exactly as :func:`compute_metrics` sees them (same uint8 quantisation), (N, D) on CPU.

    ``layer``: a feature name of the extractor (default: its FID layer, "64" for digits,
    "2048" for inception).
    """
    _tf()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name, channels, extra = _extractor_setup(extractor, inception_weights)
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    layer = layer or cls.get_default_feature_layer_for_metric("fid")
    fe = cls(name, [layer], **extra)
    fe.requires_grad_(False)
    fe.eval()
    dev = torch.device("cuda" if _use_cuda(device) else "cpu")
    fe.to(dev)
    ds = _as_dataset(images, channels, value_range)
    out = [fe(ds.images[i:i + batch_size].to(dev))[0].cpu() for i in range(0, len(ds), batch_size)]
    return torch.cat(out)
