"""What defines a run, so that ``resume`` continues only the same run, and one process at a time.

A run's *identity* is what its trained weights depend on: the teacher (a content hash of its
weights), the method and all its options, the generator's architecture and initialisation,
the data, the seed and the precision. Checkpoints record it; resuming with another identity is
refused with the keys that differ. Settings that do not change what has been trained (``steps``,
evaluation, checkpoint and logging cadence, progress, device, threads) may change freely on
resume; the remaining ones (learning rates, batch size, EMA, ...) need
``allow_config_change=true`` and each change is recorded in the checkpoints.

A lock file in the run directory (process id, host, start time) stops a second process from
writing into a live run. A lock left by a process that is gone on this host is reported and
taken over; one held on another host (a shared file system) is taken over only with ``force=true``.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..methods import ConfigError

__all__ = ["run_identity", "architecture_of", "identity_differences", "changed_settings", "FREE_KEYS", "RunLock", "RunLockedError"]

#: settings that may change freely when a run is resumed (a trailing dot: the whole section)
FREE_KEYS = ("steps", "resume", "out_dir", "prompt_cache", "device", "threads", "compile", "compile_scope", "compile_mode", "channels_last", "activation_checkpointing", "progress",
             "nvtx", "ckpt_every", "keep_last", "log_every", "sample_every", "eval_every", "eval_samples", "eval_data",
             "eval_cache", "max_nan_steps", "max_nan_fraction", "allow_config_change", "force", "method.backend",
             "distributed.backend", "log.", "teacher.path", "teacher.name", "teacher.fit_steps", "teacher.fit_batch",
             "teacher.fit_lr")
#: settings that are part of the identity itself (compared through run_identity, never changed)
IDENTITY_KEYS = ("method.", "seed", "precision", "data", "teacher.kind", "teacher.init", "teacher.mlp_hidden",
                 "teacher.mlp_layers")

LOCK_FILE = "run.lock"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def weights_hash(net) -> str:
    """sha256 of a module's tensors (names, shapes, dtypes, bytes); the class name for anything else."""
    h = hashlib.sha256(type(net).__name__.encode())
    if isinstance(net, torch.nn.Module):
        for name, t in sorted(net.state_dict().items()):
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            # reshape(-1): the elements in logical order whatever the layout (channels_last included)
            h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def architecture_of(net: torch.nn.Module, record=None) -> dict:
    """The generator's class, the record that rebuilds it (when there is one) and a hash of its
    parameter names and shapes."""
    shapes = json.dumps({k: list(v.shape) for k, v in net.state_dict().items()}, sort_keys=True)
    return {"class": type(net).__name__, "record": record,
            "shapes_sha256": hashlib.sha256(shapes.encode()).hexdigest()[:16]}


def run_identity(cfg, teacher, architecture: dict) -> dict:
    """The identity of a run with config ``cfg``, its built ``teacher`` and the generator's
    :func:`architecture_of`."""
    flat = _flat(cfg.to_dict())
    settings = {k: v for k, v in flat.items() if _matches(k, IDENTITY_KEYS) and k != "method.backend"}
    return {"teacher_sha256": weights_hash(teacher), "architecture": architecture, **settings}


def identity_differences(recorded: dict, current: dict) -> dict:
    """``{key: (recorded, current)}`` for every identity key that differs."""
    keys = sorted(set(recorded) | set(current))
    return {k: (recorded.get(k), current.get(k)) for k in keys
            if json.dumps(recorded.get(k), sort_keys=True) != json.dumps(current.get(k), sort_keys=True)}


def changed_settings(recorded_config: dict, current_config: dict, defaults: Optional[dict] = None) -> dict:
    """``{key: (recorded, current)}`` for the settings outside the identity and the free keys. A key
    the recording lacks (a setting added since it was written) counts as its value in ``defaults``."""
    a, b, d = _flat(recorded_config), _flat(current_config), _flat(defaults or {})
    keys = [k for k in sorted(set(a) | set(b)) if not _matches(k, FREE_KEYS) and not _matches(k, IDENTITY_KEYS)]
    return {k: (a.get(k, d.get(k)), b.get(k)) for k in keys if a.get(k, d.get(k)) != b.get(k)}


def describe(diffs: dict) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diffs.items())


# ----------------------------------------------------------------------------- the lock
class RunLockedError(ConfigError):
    """Another live process is writing into this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``out_dir/run.lock`` held by this process while it trains (released by :meth:`release`)."""

    def __init__(self, out_dir, force: bool = False, log: Callable[[str], None] = print):
        self.path = Path(out_dir) / LOCK_FILE
        self.force, self.log = force, log
        self.held = False

    def _read(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over(self._read(), me)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunLockedError(f"could not take the lock {self.path}; remove it if no run uses this directory")

    def _take_over(self, other: Optional[dict], me: dict) -> None:
        """Remove a lock that is ours, unreadable, stale on this host, or forced; refuse a live one."""
        if other is not None and other.get("host") == me["host"]:
            pid = int(other.get("pid", -1))
            if pid != me["pid"] and _alive(pid):
                raise RunLockedError(f"{self.path.parent} is in use by process {pid} on this host (started "
                                     f"{other.get('started')}); wait for it to finish, or choose another out_dir")
            if pid != me["pid"]:
                self.log(f"fastdistill: taking over the lock of process {pid} (no longer running) in {self.path.parent}")
        elif other is not None and not self.force:
            raise RunLockedError(f"{self.path.parent} is locked by process {other.get('pid')} on host "
                                 f"{other.get('host')} (started {other.get('started')}); if that run is over, "
                                 f"take the lock with force=true (fastdistill distill --force)")
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.held:
            other = self._read()
            if other is not None and other.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
