"""How fast a training step runs against what the device can do: wall time of calls, the
matmul/convolution FLOPs of one call, and the device's peak from a same-run dense matmul and 3x3
convolution. The training log's ``mfu`` (``log.mfu=true``) and the iteration benchmark's MFU
column both come from here."""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["sync", "time_steps", "count_flops", "dense_yardstick", "StepRate"]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[], object], device, iters: int) -> list[float]:
    """Wall time of each of ``iters`` calls of ``step``."""
    out = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def count_flops(step: Callable[[], object]):
    """(matmul/conv FLOPs of one call of ``step``, forward and backward; what it returned), from
    ``torch.utils.flop_counter``. Not under torch.compile: compiled code bypasses the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    with mode:
        out = step()
    return int(mode.get_total_flops()), out


def dense_yardstick(device, dtype: torch.dtype, repeats: int = 3, smoke: bool = False) -> dict:
    """Same-run FLOP/s of a large matmul and of a 3x3 convolution in ``dtype`` (best of
    ``repeats``; ``peak``: the larger). The convolution's FLOPs are counted as direct convolution,
    so a library that uses a faster algorithm (Winograd) shows more than the hardware's FLOP/s.
    ``smoke``: tiny sizes, to check the code runs (an emulated bf16 matmul of full size takes
    minutes on a CPU without native bf16); its figures mean nothing."""
    dev = torch.device(device)
    g = torch.Generator(dev).manual_seed(0)  # its own: a run's random streams stay untouched

    def randn(*shape):
        return torch.randn(*shape, device=dev, dtype=dtype, generator=g)

    n = 128 if smoke else 2048 if dev.type == "cpu" else 8192
    a, b = randn(n, n), randn(n, n)
    nb, c = (1, 16) if smoke else (4, 256) if dev.type == "cpu" else (128, 256)
    x, w = randn(nb, c, 32, 32), randn(c, c, 3, 3)

    def best(fn, flops):
        fn()
        return flops / min(time_steps(fn, dev, repeats))

    mm = best(lambda: a @ b, 2 * n**3)
    conv = best(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * nb * c * c * 9 * 32 * 32)
    return {"matmul": mm, "conv": conv, "peak": max(mm, conv)}


class StepRate:
    """The training log's speed columns: steps (images) per second since the last row and, with a
    device ``peak`` (``log.mfu``), TFLOP/s and MFU from this rank's FLOPs of one step, counted on
    the first step it runs."""

    def __init__(self, batch_size: int, step: int, peak: float | None):
        self.batch_size, self.peak, self.flops = batch_size, peak, None
        self.tick, self.tick_step = time.time(), step

    def run(self, train_step: Callable[[], dict]) -> dict:
        if self.peak is not None and self.flops is None:
            self.flops, row = count_flops(train_step)
            return row
        return train_step()

    def columns(self, step: int) -> dict:
        now = time.time()
        steps_per_s = (step - self.tick_step) / max(now - self.tick, 1e-9)
        self.tick, self.tick_step = now, step
        row = {"img_per_s": steps_per_s * self.batch_size}
        if self.flops:
            row.update(tflop_s=self.flops * steps_per_s / 1e12, mfu=self.flops * steps_per_s / self.peak)
        return row
