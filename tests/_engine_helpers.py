"""Small networks and configs shared by the engine tests (not a library module)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fastdistill.engine import DistillConfig
from fastdistill.engine.identity import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
_LIVE_RUN = ("from fastdistill.engine import Distiller\nfrom tests._engine_helpers import tiny_config, tiny_teacher\n"
             "import sys\nDistiller(tiny_config(sys.argv[1], threads=1, steps=10**7, ckpt_every=0, log_every=10**6),"
             " teacher=tiny_teacher(0)).run()\n")


class TinyDenoiser(nn.Module):
    """An EDM-preconditioned 2-layer MLP denoiser for vector data, small enough for unit tests."""

    sigma_data = 0.5
    label_dim = 0

    def __init__(self, dim: int = 2, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.dim = dim
        self.data_shape = (dim,)
        self.img_channels, self.img_resolution = dim, 1
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x, sigma, class_labels=None):
        s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        sd = self.sigma_data
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, s.log() / 4], 1))


def tiny_teacher(seed: int = 0, **kw) -> TinyDenoiser:
    torch.manual_seed(seed)
    return TinyDenoiser(**kw)


def tiny_config(out_dir, **over) -> DistillConfig:
    items = {"teacher.kind": "network", "steps": 6, "batch_size": 16, "out_dir": str(out_dir), "resume": "none",
             "progress": False, "ckpt_every": 0, "log_every": 1, "optim.lr": 1e-3, "method.backend": "reference",
             "nvtx": False, "threads": 1}
    items.update(over)
    return DistillConfig().with_overrides([f"{k}={v}" for k, v in items.items()])


def params_of(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@contextlib.contextmanager
def live_run(out_dir, timeout: float = 120):
    """A training process writing into ``out_dir`` (it runs until killed), yielded once its lock
    names it; killed on exit."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _LIVE_RUN, str(out_dir)], cwd=REPO, env=env)
    lock = Path(out_dir) / LOCK_FILE
    try:
        deadline = time.time() + timeout
        while not lock.exists() or not lock.read_text():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()
