"""A tiny CNN classifier for scikit-learn's 8x8 digits: the feature space of digit FID/KID/PR.

Diffusion distillation experiments at toy scale (``sklearn.datasets.load_digits``, 1797 grey
8x8 images, scaled to [-1, 1]) need a sample-quality metric that works offline. Inception-v3
features are meaningless on 8x8 digits and its weights cannot be downloaded here, so FID is
computed in the 64-d penultimate layer of this classifier instead (the way MNIST papers use a
LeNet). ``fastdistill.metrics.fidelity`` registers it with torch-fidelity as
``"fastdistill-digits"``.

Network (18.3k parameters, 73 KB as float32 safetensors)::

    (N,1,8,8) in [-1,1] -> conv3x3(1->8)+ReLU -> conv3x3(8->16)+ReLU -> avgpool2 (16x4x4)
    -> linear(256->64) = "64" features -> ReLU -> linear(64->10) = "logits"

The features are the penultimate layer's pre-activations: with ReLU applied, 11 of the 64 units
are inactive on every digit (a rank-53 covariance); before it all 64 vary (full rank), which
suits FID's Gaussian fit.

The "64" features are scaled (a constant folded into the weights after training) to unit mean
square on the training split, E|f|^2 / 64 = 1, so KID's polynomial kernel sees O(1) inner
products as with Inception features. FID values are in these units: two disjoint halves of the
digits give FID ~0.1, Gaussian pixel noise of std 0.5 ~1, a one-pixel roll ~7.

Accepted inputs: (N, 1 or 3, H, H) with H a multiple of 8 (8, 16, 32, ...). Larger images are
average-pooled to 8x8 (so a 16x16 upsampled digit maps back to the 8x8 grid); 3 channels are
averaged to grey. Float inputs are in [-1, 1]; uint8 inputs in [0, 255] (x / 127.5 - 1).

Hold-out split: digit ``i`` of ``load_digits()`` (in its fixed order) is held out when
``i % 5 == 4`` (359 images, all classes), the other 1438 are for training.

Shipped weights (``fastdistill/assets/digits_classifier.safetensors``) were produced by::

    fastdistill train-classifier --out fastdistill/assets/digits_classifier.safetensors

(seed 0, one CPU thread, deterministic algorithms, 40 epochs, a few seconds) and reach
**98.33 % held-out accuracy** (353/359; train accuracy 100 %). The safetensors metadata
records the seed, epochs, split rule and both accuracies. ``fastdistill train-classifier
--eval-only`` re-checks the shipped file.
"""
from __future__ import annotations

import contextlib
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "DigitsClassifier",
    "load_digits_classifier",
    "default_weights_path",
    "digits_dataset",
    "train_classifier",
    "evaluate_accuracy",
    "FEATURE_DIM",
    "HELDOUT_MOD",
]

FEATURE_DIM = 64
NUM_CLASSES = 10
HELDOUT_MOD = 5  # index % 5 == 4 is held out
ASSET_NAME = "digits_classifier.safetensors"
METADATA_KEY = "fastdistill.digits_classifier"


class DigitsClassifier(nn.Module):
    """Tiny CNN for 8x8 digits. ``forward`` returns logits; ``features`` the 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """Bring (N, C, H, H) images (float in [-1, 1] or uint8) to float (N, 1, 8, 8) in [-1, 1]."""
        if not torch.is_tensor(x):
            x = torch.as_tensor(x)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h != w or h % 8 != 0 or h == 0:
            raise ValueError(
                f"digits classifier accepts square images whose side is a multiple of 8 (8, 16, 32, ...), got {h}x{w}"
            )
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 127.5 - 1.0
        elif not x.is_floating_point():
            raise TypeError(f"expected a float tensor in [-1, 1] or uint8 in [0, 255], got {x.dtype}")
        else:
            x = x.to(torch.float32)
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if h != 8:
            x = F.avg_pool2d(x, kernel_size=h // 8)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """64-d penultimate pre-activations (before the last ReLU), float32."""
        x = self.prepare(x).to(self.fc1.weight.device)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.avg_pool2d(x, 2)
        return self.fc1(x.flatten(1))

    def features_and_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.fc2(F.relu(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.features(x)))


def default_weights_path():
    """The shipped weights, resolved from package data (works from a wheel or an editable install)."""
    return resources.files("fastdistill").joinpath("assets", ASSET_NAME)


def load_digits_classifier(path: Optional[Union[str, Path]] = None, device="cpu") -> DigitsClassifier:
    """Load the classifier (eval mode, no grad) from ``path`` or from the shipped package asset."""
    from safetensors.torch import load as st_load

    if path is None:
        ref = default_weights_path()
        if not ref.is_file():
            raise FileNotFoundError(
                f"shipped digits classifier weights not found in package data ({ref}); reinstall fastdistill or "
                "regenerate them with: python -m fastdistill.metrics.digits_classifier --train "
                "--out fastdistill/assets/digits_classifier.safetensors"
            )
        data = ref.read_bytes()
    else:
        data = Path(path).read_bytes()
    state = st_load(data)
    model = DigitsClassifier()
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.eval().to(device)


def read_metadata(path: Optional[Union[str, Path]] = None) -> dict:
    """The training metadata stored in the safetensors header (seed, epochs, accuracies...)."""
    from safetensors import safe_open

    with resources.as_file(default_weights_path()) if path is None else contextlib.nullcontext(Path(path)) as p:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}



def digits_dataset(split: str = "all") -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as ((N,1,8,8) float32 in [-1,1], (N,) int64 labels).

    ``split``: "all" (1797), "train" (1438) or "heldout" (359; index % 5 == 4 in load_digits order).
    Scaling is pixel / 8 - 1 (pixels are 0..16), the same as ``fastdistill.data``.
    """
    try:
        from fastdistill.data import digits  # the project's loader (needs scikit-learn)

        ds = digits()
        x, y = ds.data, ds.labels
    except ImportError as e:
        if "sklearn" in str(e) or "scikit" in str(e):
            raise
        from sklearn.datasets import load_digits  # fallback if fastdistill.data is unavailable

        d = load_digits()
        x = torch.from_numpy(d.images).to(torch.float32).div(8.0).sub(1.0).unsqueeze(1)
        y = torch.from_numpy(d.target).to(torch.int64)
    idx = torch.arange(len(y))
    if split == "all":
        return x, y
    held = idx % HELDOUT_MOD == HELDOUT_MOD - 1
    if split == "heldout":
        return x[held], y[held]
    if split == "train":
        return x[~held], y[~held]
    raise ValueError(f"split must be 'all', 'train' or 'heldout', got {split!r}")


@torch.no_grad()
def evaluate_accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = model(x).argmax(dim=1).cpu()
    return float((pred == y).to(torch.float64).mean())


def train_classifier(seed: int = 0, epochs: int = 40, batch_size: int = 64, lr: float = 3e-3,
                     verbose: bool = False) -> Tuple[DigitsClassifier, dict]:
    """Train from scratch on the train split, deterministically on CPU. Returns (model, metadata)."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # fixed reduction order; also polite on a shared machine
    torch.use_deterministic_algorithms(True)
    try:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        xtr, ytr = digits_dataset("train")
        xte, yte = digits_dataset("heldout")
        model = DigitsClassifier()
        # explicit seeded init, independent of the global RNG state
        with torch.no_grad():
            for m in (model.conv1, model.conv2, model.fc1, model.fc2):
                fan_in = m.weight[0].numel()
                gain = 2.0 if m is not model.fc2 else 1.0  # He-uniform before a ReLU, LeCun for logits
                bound = (3.0 * gain / fan_in) ** 0.5
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.zero_()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = (len(ytr) + batch_size - 1) // batch_size
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(len(ytr), generator=g)
            total = 0.0
            for i in range(0, len(ytr), batch_size):
                b = perm[i:i + batch_size]
                xb = xtr[b]
                # light augmentation: generator samples are not on the 17-level grid of the data
                xb = (xb + 0.05 * torch.randn(xb.shape, generator=g)).clamp(-1, 1)
                loss = F.cross_entropy(model(xb), ytr[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(b)
            if verbose:
                print(f"epoch {epoch + 1:3d}  loss {total / len(ytr):.4f}", file=sys.stderr)
        model.eval()
        model.requires_grad_(False)
        # Fold a feature scale into the weights so the 64-d features have unit mean square on the
        # training split (E|f|^2 / 64 = 1): ReLU is positively homogeneous, so fc1 *= s and
        # fc2.weight /= s leave the logits unchanged. This puts KID's polynomial kernel
        # (x.y / d + 1)^3 in the same regime as with Inception features; FID is in these units.
        with torch.no_grad():
            scale = float(model.features(xtr).pow(2).mean().rsqrt())
            model.fc1.weight.mul_(scale)
            model.fc1.bias.mul_(scale)
            model.fc2.weight.div_(scale)
        meta = {
            "feature_scale_folded": f"{scale:.6f}",
            "seed": str(seed),
            "epochs": str(epochs),
            "batch_size": str(batch_size),
            "lr": str(lr),
            "split": "load_digits() index % 5 == 4 held out",
            "train_accuracy": f"{evaluate_accuracy(model, xtr, ytr):.6f}",
            "heldout_accuracy": f"{evaluate_accuracy(model, xte, yte):.6f}",
            "n_train": str(len(ytr)),
            "n_heldout": str(len(yte)),
            "input": "(N,1,8,8) float in [-1,1] = pixel/8-1; uint8 /127.5-1; HxH with H%8==0 avg-pooled",
            "features": "64: fc1 pre-activation; logits: fc2(relu(64))",
            "torch_version": torch.__version__,
        }
        return model, meta
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def save_classifier(model: DigitsClassifier, path: Union[str, Path], metadata: Optional[dict] = None) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # one key holding sorted JSON: safetensors writes a multi-key metadata map in arbitrary order,
    # which would make the file bytes differ between identical runs
    meta = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True)}
    save_file(state, str(path), metadata=meta)
