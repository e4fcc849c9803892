"""Content hashes of networks' weights (a teacher, its text encoders, its VAE) and of tensors: what a run's
identity, the prompt cache and the evaluation caches key on (names, shapes, dtypes and bytes, so any
change of weights is another hash)."""
from __future__ import annotations

import hashlib

import torch

__all__ = ["tensors_sha256", "weights_hash"]


def tensors_sha256(tensors: dict, prefix: str = "") -> str:
    """sha256 of ``prefix`` and then named tensors (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256(prefix.encode())
    for name, t in sorted(tensors.items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        # reshape(-1): the elements in logical order whatever the layout (channels_last included)
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_hash(net) -> str:
    """sha256 of a module's tensors (names, shapes, dtypes, bytes); the class name for anything else."""
    return tensors_sha256(net.state_dict() if isinstance(net, torch.nn.Module) else {}, type(net).__name__)
