"""The process side of a run: device, process group, threads and matmul precision, the batch's
split over ranks and micro-batches, the run folder (checked, locked, left clean on failure), and
the signals and requests that stop a run after its current step."""
from __future__ import annotations

import os
import signal
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from ..methods import ConfigError
from . import checkpoint as ckpt
from . import distributed as D
from .identity import RunLock, check_run_folder

#: signals that checkpoint the run and stop it (see :meth:`Stop.signals_handled`)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
RESUME_HINT = "resume with resume=auto"  # printed when a run stops early (Ctrl-C, request_stop)


class RunProcess:
    """This rank's device and share of the batch, set up for one run; :meth:`restore` gives the
    process its threads and matmul precision back."""

    def __init__(self, cfg):
        self.device = D.local_device(cfg.device)
        D.init_from_env(cfg.distributed.backend, self.device)
        self.rank, self.world = D.rank(), D.world_size()
        self.main = self.rank == 0
        tf32 = cfg.precision == "tf32" and self.device.type == "cuda"
        self._previous = (torch.get_num_threads(), torch.get_float32_matmul_precision() if tf32 else None)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.precision == "tf32":
            if tf32:  # matmuls too (cuDNN's convolutions use TF32 by default)
                torch.set_float32_matmul_precision("high")
            elif self.main:
                print(f"fastdistill: precision=tf32 on {self.device}: TF32 is a CUDA format, this run computes in fp32")
        self.per_rank, rem = divmod(cfg.batch_size, self.world)
        if rem:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the world size {self.world}")
        self.micro, rem = divmod(self.per_rank, cfg.optim.grad_accum)
        if rem or self.micro == 0:
            raise ConfigError(f"per-rank batch {self.per_rank} is not divisible by optim.grad_accum "
                              f"{cfg.optim.grad_accum}")

    def restore(self) -> None:
        """The threads and matmul precision the process had before this run."""
        threads, matmul = self._previous
        torch.set_num_threads(threads)
        if matmul is not None:
            torch.set_float32_matmul_precision(matmul)


class RunFolder:
    """The run's output folder: checked writable before anything loads, locked by rank 0 for every
    rank (which alone clears what dead writers left, once it holds the lock), released when the run
    ends or the owner goes, and removed again when a failed start left it empty."""

    def __init__(self, out_dir: Path, force: bool, main: bool):
        self.path, self.main = Path(out_dir), main
        self._created = [p for p in (ckpt.ckpt_root(self.path), self.path) if not p.exists()]
        err = None
        if main:
            try:
                check_run_folder(self.path)
                ckpt.check_writable(self.path)
            except (ConfigError, PermissionError) as exc:
                err = (type(exc), str(exc))
        err = D.broadcast_object(err)
        if err:
            raise err[0](err[1])
        lock = RunLock(self.path, force=force)
        if main:
            lock.acquire()
            ckpt.remove_stale_temporaries(self.path)
        self.release = weakref.finalize(self, lock.release)

    def remove_if_empty(self) -> None:
        """A run that failed before training leaves no empty folders behind (only those it made)."""
        if not self.main:
            return
        for p in self._created:
            try:
                p.rmdir()
            except OSError:  # not empty (or already gone): keep it
                pass


class Stop:
    """Whether the run stops after the current step: asked by :meth:`request` or by a signal."""

    def __init__(self):
        self.requested = False
        self.signal: Optional[int] = None
        self.hint = RESUME_HINT

    def request(self, hint: str = RESUME_HINT) -> None:
        self.requested, self.hint = True, hint

    @contextmanager
    def signals_handled(self, main: bool):
        """SIGINT (Ctrl-C), SIGTERM (what schedulers send before killing a job) and SIGUSR1 (sent by
        some before a time limit) request a stop; a second signal exits at once. Off the main thread
        signals cannot be handled, and are left as they are."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

        def handler(signum, frame):
            if self.requested:  # the second signal: give up at once
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self.signal = signum
            self.request()
            if main:
                print(f"\nfastdistill: {signal.Signals(signum).name} received; checkpointing after this step "
                      f"(a second one aborts at once)", flush=True)

        for s in STOP_SIGNALS:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
