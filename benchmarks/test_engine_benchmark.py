"""Images/s of one full distillation iteration (fake step + generator step + EMA).

Two loops on the same tiny EDM network (EDMPrecond + SongUNet, 16x16):

- ``eager``: written the way the authors' code is: unfused losses in plain tensor ops, plain
  (for-loop) Adam, a Python loop for the EMA, per-parameter gradient clean-up;
- ``engine``: fastdistill's Distiller (fused losses, fused/foreach Adam, ``_foreach_lerp_`` EMA),
  with ``torch.compile`` of the networks when benchmarking is enabled.

The speed ratio is stored in ``extra_info`` of the engine benchmark. Under ``--benchmark-disable``
each loop runs once, eagerly (no compile), as a quick smoke test.
"""
from __future__ import annotations

import copy
import time

import pytest
import torch

from fastdistill.engine import DistillConfig, Distiller
from fastdistill.methods import karras_sigma

BATCH, RES = 8, 16
RESULTS: dict = {}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: stable numbers on a shared 2-core machine (oversubscription is ruinous)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_edm():
    from fastdistill.teachers.precond import EDMPrecond

    torch.manual_seed(0)
    return EDMPrecond(img_resolution=RES, img_channels=3, model_type="SongUNet", model_channels=32,
                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


class EagerLoop:
    """A straightforward SiD iteration as the reference implementation writes it."""

    def __init__(self, teacher, lr=1e-5):
        self.teacher = teacher.eval().requires_grad_(False)
        self.G = copy.deepcopy(teacher).requires_grad_(True)
        self.fake = copy.deepcopy(teacher).requires_grad_(True)
        self.ema = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8, foreach=False)
        self.opt_f = torch.optim.Adam(self.fake.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8, foreach=False)
        self.nimg = 0

    def step(self):
        B, s0, sd = BATCH, 2.5, 0.5
        # fake-score step
        self.G.eval().requires_grad_(False)
        self.fake.train().requires_grad_(True)
        z = torch.randn(B, 3, RES, RES)
        with torch.no_grad():
            x_g = self.G(z * s0, torch.full((B,), s0))
        sigma = (torch.randn(B) * 1.2 - 1.2).exp().reshape(-1, 1, 1, 1)
        pred = self.fake(x_g + sigma * torch.randn_like(x_g), sigma.flatten())
        lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
        loss_f = (lam * (pred - x_g) ** 2).sum(dim=[1, 2, 3]).mean()
        self.opt_f.zero_grad()
        loss_f.backward()
        for p in self.fake.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        self.opt_f.step()
        # generator step
        self.G.train().requires_grad_(True)
        self.fake.eval().requires_grad_(False)
        z = torch.randn(B, 3, RES, RES)
        x_g = self.G(z * s0, torch.full((B,), s0))
        sig = karras_sigma(torch.rand(B) * 0.8, 0.002, 80.0, 7.0).reshape(-1, 1, 1, 1)
        x_t = x_g + sig * torch.randn_like(x_g)
        y_real = self.teacher(x_t, sig.flatten())
        y_fake = self.fake(x_t, sig.flatten())
        nan = torch.isnan(y_real) | torch.isnan(y_fake) | torch.isnan(x_g)
        w = (x_g - y_real).abs().mean(dim=[1, 2, 3], keepdim=True).clip(min=1e-5).detach()
        loss = (y_real - y_fake) * ((y_real - x_g) - 1.2 * (y_real - y_fake)) / w
        loss = torch.where(nan, torch.zeros_like(loss), loss)
        loss_g = loss.sum(dim=[1, 2, 3]).mean() * 100
        self.opt_g.zero_grad()
        loss_g.backward()
        for p in self.G.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        self.opt_g.step()
        # EMA, parameter by parameter
        hl = min(500e3, 0.05 * self.nimg)
        beta = 0.5 ** (B / max(hl, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
        self.nimg += B


def _measure(benchmark, fn, warmup: int):
    if not benchmark.disabled:
        for _ in range(warmup):
            fn()
        benchmark.pedantic(fn, rounds=5, iterations=2, warmup_rounds=0)
        return benchmark.stats.stats.median
    t0 = time.perf_counter()
    benchmark(fn)
    return time.perf_counter() - t0


@pytest.mark.benchmark(group="engine-iteration")
def test_eager_iteration(benchmark):
    loop = EagerLoop(tiny_edm())
    t = _measure(benchmark, loop.step, warmup=2)
    RESULTS["eager"] = t
    benchmark.extra_info.update(images_per_s=BATCH / t, batch=BATCH, resolution=RES)


@pytest.mark.benchmark(group="engine-iteration")
def test_engine_iteration(benchmark, tmp_path):
    compiled = not benchmark.disabled
    cfg = DistillConfig().with_overrides([
        "teacher.kind=network", f"batch_size={BATCH}", f"out_dir={tmp_path}", "resume=none", "progress=false", "threads=1",
        f"compile={str(compiled).lower()}", "nvtx=false"])
    d = Distiller(cfg, teacher=tiny_edm())
    t = _measure(benchmark, d.train_step, warmup=3)
    info = dict(images_per_s=BATCH / t, batch=BATCH, resolution=RES, compiled=compiled,
                adam=type(d.opt_g).__name__ + ("(fused)" if d.opt_g.defaults.get("fused") else "(foreach)"))
    if "eager" not in RESULTS:  # run alone: time the eager loop here
        loop = EagerLoop(tiny_edm())
        loop.step()
        t0 = time.perf_counter()
        for _ in range(3):
            loop.step()
        RESULTS["eager"] = (time.perf_counter() - t0) / 3
    info["eager_images_per_s"] = BATCH / RESULTS["eager"]
    info["speedup_vs_eager"] = RESULTS["eager"] / t
    benchmark.extra_info.update(info)
    print(f"\nengine {BATCH / t:.1f} img/s vs eager {BATCH / RESULTS['eager']:.1f} img/s: x{RESULTS['eager'] / t:.2f}")
