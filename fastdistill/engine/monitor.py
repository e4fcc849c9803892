"""Progress bar, metrics logging (JSONL, TensorBoard, wandb) and NVTX ranges (all no-ops where they cannot apply)."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import numbers
import os
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


class MetricsLogger:
    """One sink for a run's metric rows: metrics.jsonl always, TensorBoard and/or Weights & Biases on request.

    ``MetricsLogger(out_dir, *, enabled=True, tensorboard="auto", wandb=False,
    wandb_project="fastdistill", run_name=None, config=None)``

    * ``out_dir/metrics.jsonl`` is appended one JSON object per :meth:`log` call, flushed at
      once so a crashed run keeps its rows; non-finite floats become ``null`` (JSON has no NaN)
      and a ``"time"`` key (Unix seconds) is added unless the row has one.
    * ``tensorboard``: ``"auto"`` writes event files to ``out_dir/tensorboard`` when the
      ``tensorboard`` package is importable and stays silent otherwise (it is an optional
      extra); ``True`` requires it (ImportError); ``False`` turns it off.
    * ``wandb=True`` starts ``wandb.init(project=wandb_project, name=run_name, config=config,
      dir=out_dir)``; ``mode`` is not passed, so the user's ``WANDB_MODE`` (e.g. ``offline``)
      and other ``WANDB_*`` settings apply. A missing ``wandb`` is an ImportError here, at
      construction, rather than after the first training steps.
    * Only numeric values reach TensorBoard and wandb: ints and floats (numpy scalars too), but
      not bools, which are flags rather than curves, and not strings or ``None``. Key names are
      kept as they are; ``"step"`` is the x-axis (``global_step`` / ``step=``) and ``"time"``
      is left out. Non-finite floats are passed on, so a NaN loss shows in the plots.
    * ``enabled=False`` (non-zero ranks) imports, creates and writes nothing (the engine checks
      that requested packages exist when it validates the config, on every rank alike).

    ``close()`` flushes and closes everything and may be called more than once; the logger is
    also a context manager that closes on exit.
    """

    def __init__(self, out_dir, *, enabled: bool = True, tensorboard="auto", wandb: bool = False,
                 wandb_project: str = "fastdistill", run_name: str | None = None, config=None):
        if tensorboard not in ("auto", True, False):
            raise ValueError(f"tensorboard must be 'auto', True or False, got {tensorboard!r}")
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._f = self._tb = self._run = None
        if not enabled:
            return
        # Imports come first so that a missing package fails before any file is opened.
        writer_cls = _summary_writer(required=tensorboard is True) if tensorboard else None
        wandb_mod = _wandb() if wandb else None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.jsonl"
        try:  # never through a symbolic link: a run folder is an input, and a link there could point anywhere
            self._f = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "a")
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise PermissionError(f"{path} is a symbolic link; a run writes its metrics only into a plain file "
                                  f"(remove the link, or choose another out_dir)") from None
        if writer_cls is not None:
            self._tb = writer_cls(log_dir=str(self.out_dir / "tensorboard"))
        if wandb_mod is not None:
            self._run = wandb_mod.init(project=wandb_project, name=run_name, config=config, dir=str(self.out_dir))

    def log(self, **row) -> None:
        """Write one row (typically ``step=..., loss_gen=..., ...``) to every open sink."""
        if self._f is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        clean.setdefault("time", time.time())
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()
        step = row.get("step")
        scalars = {k: v for k, v in row.items() if k not in ("step", "time") and _is_number(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._run is not None and scalars:
            self._run.log(scalars, step=step)

    def close(self) -> None:
        """Flush and close the JSONL file, the event files and the wandb run; later calls do nothing."""
        f, tb, run = self._f, self._tb, self._run
        self._f = self._tb = self._run = None
        if f is not None:
            f.close()
        if tb is not None:
            tb.flush()
            tb.close()
        if run is not None:
            run.finish()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_number(v) -> bool:
    """Ints and floats, numpy scalars included; bools are flags, not curves."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _summary_writer(required: bool):
    """torch's SummaryWriter, or None when "auto" finds no ``tensorboard`` package.

    ``tensorboard`` is imported explicitly because torch.utils.tensorboard needs it but may
    already sit in sys.modules from an earlier import.
    """
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if required:
            raise ImportError("tensorboard=True needs the tensorboard package: pip install tensorboard") from e
        return None
    return SummaryWriter


def _wandb():
    try:
        import wandb
    except ImportError as e:
        raise ImportError("log.wandb=true needs wandb: pip install wandb") from e
    return wandb


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "distill"):
    """tqdm bar with rate and ETA (in iterations; images/s shown in the postfix)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True, smoothing=0.1)
