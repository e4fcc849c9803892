"""Progress bar, JSONL metrics and NVTX ranges (all no-ops where they cannot apply)."""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch

try:  # the `nvtx` package is optional; torch.cuda.nvtx needs CUDA
    import nvtx as _nvtx_pkg  # type: ignore
except Exception:  # pragma: no cover - depends on the environment
    _nvtx_pkg = None


def _make_range():
    if torch.cuda.is_available():
        def rng(name):
            @contextlib.contextmanager
            def cm():
                torch.cuda.nvtx.range_push(name)
                try:
                    yield
                finally:
                    torch.cuda.nvtx.range_pop()
            return cm()
        return rng
    if _nvtx_pkg is not None:
        return lambda name: _nvtx_pkg.annotate(name)
    return None


class NVTX:
    """``with nvtx("generator"):`` marks a phase for Nsight Systems; free without a profiler, a no-op on CPU-only hosts."""

    def __init__(self, enabled: bool = True):
        self._range = _make_range() if enabled else None

    def __call__(self, name: str):
        if self._range is None:
            return contextlib.nullcontext()
        try:
            return self._range(name)
        except Exception:
            self._range = None
            return contextlib.nullcontext()


class JSONLLogger:
    """Append-only metrics file, one JSON object per line (rank 0 only)."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._f = open(self.path, "a") if enabled else None

    def log(self, **row) -> None:
        if self._f is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        clean.setdefault("time", time.time())
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "distill"):
    """tqdm bar with rate and ETA (in iterations; images/s shown in the postfix)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True, smoothing=0.1)
