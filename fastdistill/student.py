"""One-step sampling from a distilled generator: ``sample(checkpoint, n, seed) -> tensor``.

``x = G(z) = D_theta(sigma_init z; sigma_init, c)`` with ``z ~ N(0, I)`` drawn on the CPU from
``seed`` (so a seed gives the same samples on every device). ``checkpoint`` is a checkpoint
directory written by the engine, or a run directory (its latest checkpoint is used).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .engine import checkpoint as ckpt


def _resolve(checkpoint) -> Path:
    p = Path(checkpoint)
    if (p / ckpt.STATE_FILE).is_file():
        return p
    latest = ckpt.latest_checkpoint(p)
    if latest is None:
        raise FileNotFoundError(f"no distillation checkpoint at {checkpoint!s} (expected a checkpoint "
                                f"directory with {ckpt.STATE_FILE}, or a run directory containing checkpoints/)")
    return latest


def _decode(kwargs):
    from .teachers import checkpoint as tc

    return tc._decode(kwargs) if hasattr(tc, "_decode") else kwargs


def load_student(checkpoint, which: str = "ema", network: Optional[torch.nn.Module] = None,
                 device="cpu") -> tuple[torch.nn.Module, dict]:
    """The generator network (``which``: ema | generator) and the checkpoint's state dict.

    The architecture is rebuilt from the checkpoint's record: the fitted MLP for analytic
    teachers, the teacher checkpoint for ``teacher.kind=checkpoint``; for a teacher that was a
    Python object, pass a module of the same architecture as ``network``.
    """
    if which not in ("ema", "generator"):
        raise ValueError(f"which must be 'ema' or 'generator', got {which!r}")
    path = _resolve(checkpoint)
    tensors, state = ckpt.load_checkpoint(path)
    if network is not None:
        import copy

        net = copy.deepcopy(network)
    elif state.get("arch_config"):
        from .teachers.checkpoint import build_teacher

        net = build_teacher(state["arch_config"]["class_name"], _decode(state["arch_config"]["init_kwargs"]))
    elif state.get("arch"):
        from .engine.build import make_mlp

        net = make_mlp(state["arch"])
    elif state["config"]["teacher"]["kind"] == "checkpoint":
        from .teachers.loading import load_teacher

        net = load_teacher(state["config"]["teacher"]["path"])
    else:
        raise ValueError(f"{path}: the generator's architecture came from a Python object; pass network=<module>")
    net.load_state_dict(tensors[which])
    return net.to(device).eval().requires_grad_(False), state


@torch.no_grad()
def sample(checkpoint, n: int, seed: int = 0, class_labels=None, which: str = "ema",
           batch_size: int = 1024, device="cpu", network: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """``n`` one-step samples, float32, shape (n, *data_shape), on the CPU."""
    net, state = load_student(checkpoint, which, network, device)
    n = int(n)
    if n < 0:
        raise ValueError("n must be non-negative")
    shape = tuple(state["data_shape"])
    label_dim = int(state.get("label_dim", 0))
    s = float(state["sigma_init"])
    g = torch.Generator().manual_seed(int(seed))
    labels = None
    if label_dim:
        if class_labels is None:
            idx = torch.randint(0, label_dim, (n,), generator=g)
        else:
            idx = torch.as_tensor(class_labels).long().reshape(-1).expand(n)
        labels = torch.nn.functional.one_hot(idx, label_dim).float()
    z = torch.randn((n, *shape), generator=g)
    out = []
    for i in range(0, n, batch_size):
        zi = z[i:i + batch_size].to(device)
        li = None if labels is None else labels[i:i + batch_size].to(device)
        sig = torch.full((zi.shape[0],), s, device=device)
        out.append(net(zi * s, sig, li).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, *shape))


def save_samples(x: torch.Tensor, png_path=None, npz_path=None) -> dict:
    """Write a picture (image grid or 2-D scatter) and/or an .npz (key ``samples``)."""
    from .engine.visual import save_samples_picture

    out = {}
    if png_path:
        out["png"] = str(save_samples_picture(x, png_path))
    if npz_path:
        np.savez(npz_path, samples=x.detach().cpu().numpy())
        out["npz"] = str(npz_path)
    return out
