"""What defines a run, so that ``resume`` continues only the same run, and one process at a time.

A run's *identity* is what its trained weights depend on: the teacher (a content hash of its
weights), the method and all its options, the generator's architecture and initialisation,
the data, the seed and the precision. Checkpoints record it; resuming with another identity is
refused with the keys that differ. Settings that do not change what has been trained (``steps``,
evaluation, checkpoint and logging cadence, progress, device, threads) may change freely on
resume; the remaining ones (learning rates, batch size, EMA, ...) need
``allow_config_change=true`` and each change is recorded in the checkpoints.

A lock file in the run directory stops a second process from writing into a live run. It is
held with ``flock`` (atomic; the kernel lets go when the process dies) and names its holder
(process id, host, start time) for the messages. A lock whose file names a live process on this
host is refused as well, and one naming another host (a shared file system) is taken over only
with ``force=true``; a lock left by a process that is gone is reported and taken over.
"""
from __future__ import annotations

import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..teachers.hashing import weights_hash

from ..methods import ConfigError

__all__ = ["run_identity", "architecture_of", "identity_differences", "changed_settings", "check_resume", "FREE_KEYS",
           "RunLock", "RunLockedError", "check_run_folder"]

#: settings that may change freely when a run is resumed (a trailing dot: the whole section)
FREE_KEYS = ("steps", "resume", "out_dir", "prompt_cache", "device", "threads", "compile", "compile_scope", "compile_mode", "channels_last", "activation_checkpointing", "progress",
             "nvtx", "ckpt_every", "keep_last", "log_every", "sample_every", "eval_every", "eval_samples", "final_samples", "eval_data",
             "eval_cache", "max_nan_steps", "max_nan_fraction", "allow_config_change", "force", "method.backend",
             "distributed.backend", "log.", "teacher.path", "teacher.family", "teacher.name", "teacher.fit_steps", "teacher.fit_batch",
             "teacher.fit_lr")
#: settings that are part of the identity itself (compared through run_identity, never changed)
IDENTITY_KEYS = ("method.", "seed", "precision", "data", "teacher.kind", "teacher.init", "teacher.mlp_hidden",
                 "teacher.mlp_layers")

LOCK_FILE = "run.lock"
#: what only a run's folder holds: its checkpoints, its lock, its metrics log, its prompt cache
#: (encoded before training: a run refused after that leaves it behind)
RUN_MARKERS = ("checkpoints", LOCK_FILE, "metrics.jsonl", "prompt_cache")
#: what a run writes beside them (fnmatch patterns)
RUN_OUTPUTS = ("config.json", "samples.png", "samples-*.png", "samples.npz", "student.safetensors",
               "*_vs_iterations.png", "tensorboard")


def check_run_folder(out_dir) -> None:
    """Refuse an ``out_dir`` that is not a run's but holds files of the names a run writes: they
    would be replaced. A user's other files are left as they are, beside the run's."""
    out_dir = Path(out_dir)
    try:
        names = sorted(p.name for p in out_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return  # a new folder, or a path check_writable refuses with its own message
    if any(name in RUN_MARKERS for name in names):
        return
    clashes = [name for name in names if any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_OUTPUTS)]
    if clashes:
        shown = ", ".join(clashes[:5]) + (f" and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise ConfigError(f"out_dir {out_dir} is not a fastdistill run but holds files a run would replace "
                          f"({shown}): give a new or empty folder")


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


def architecture_of(net: torch.nn.Module, record=None) -> dict:
    """The generator's class, the record that rebuilds it (when there is one) and a hash of its
    parameter names and shapes."""
    shapes = json.dumps({k: list(v.shape) for k, v in net.state_dict().items()}, sort_keys=True)
    return {"class": type(net).__name__, "record": record,
            "shapes_sha256": hashlib.sha256(shapes.encode()).hexdigest()[:16]}


#: identity keys added after checkpoints first recorded an identity: compared only when recorded
LATER_KEYS = ("prompts_sha256",)
#: settings added since some checkpoints were written, with the value that reproduces their runs: a
#: run resumed from a checkpoint whose config lacks one continues with that value
ADDED_SETTINGS = {"lora.share_base": False}


def as_recorded(cfg, recorded_config: dict):
    """``cfg`` with each of :data:`ADDED_SETTINGS` that the checkpoint's config lacks set as its run had it."""
    flat = _flat(recorded_config)
    older = [f"{k}={v}" for k, v in ADDED_SETTINGS.items() if k not in flat]
    return cfg.with_overrides(older).validate() if older else cfg


def run_identity(cfg, teacher, architecture: dict, prompts_sha256: Optional[str] = None) -> dict:
    """The identity of a run with config ``cfg``, its built ``teacher``, the generator's
    :func:`architecture_of` and, for a text-to-image run, the content hash of its prompt list."""
    flat = _flat(cfg.to_dict())
    settings = {k: v for k, v in flat.items() if _matches(k, IDENTITY_KEYS) and k != "method.backend"}
    prompts = {} if prompts_sha256 is None else {"prompts_sha256": prompts_sha256}
    return {"teacher_sha256": weights_hash(teacher), "architecture": architecture, **prompts, **settings}


def identity_differences(recorded: dict, current: dict) -> dict:
    """``{key: (recorded, current)}`` for every identity key that differs."""
    keys = sorted((set(recorded) | set(current)) - {k for k in LATER_KEYS if k not in recorded})
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


def check_resume(path: Path, state, cfg, identity: dict, main: bool) -> list[dict]:
    """Resume only the same run: refuse another identity, and changed settings unless
    ``cfg.allow_config_change``; returns the run's record of setting changes, this one appended."""
    from .config import DistillConfig

    recorded = state.identity
    if recorded is None:
        if main:
            print(f"fastdistill: {path} records no run identity (written by an older fastdistill); resuming "
                  f"without checking that it is the same run")
    else:
        diffs = identity_differences(recorded, identity)
        if diffs:
            raise ConfigError(f"{path.parent.parent} holds a different run ({describe(diffs)}): start this one in "
                              f"another out_dir, or resume with that run's settings")
    defaults = DistillConfig().with_overrides([f"method.name={cfg.method.name}"]
                                              + [f"{k}={v}" for k, v in ADDED_SETTINGS.items()]).to_dict()
    changed = changed_settings(state.config, cfg.to_dict(), defaults)
    changes = list(state.config_changes)
    if changed:
        if not cfg.allow_config_change:
            raise ConfigError(f"resuming {path} with changed settings ({describe(changed)}): pass "
                              f"allow_config_change=true to continue with them (the change is recorded), or "
                              f"resume with the run's settings")
        changes.append({"step": state.step, "changes": {k: list(v) for k, v in changed.items()}})
        if main:
            print(f"fastdistill: settings changed at step {state.step} (recorded): {describe(changed)}")
    return changes


# ----------------------------------------------------------------------------- the lock
class RunLockedError(ConfigError):
    """Another live process is writing into this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``out_dir/run.lock`` held by this process while it trains (released by :meth:`release`)."""

    def __init__(self, out_dir, force: bool = False, log: Callable[[str], None] = print):
        self.path = Path(out_dir) / LOCK_FILE
        self.force, self.log = force, log
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @staticmethod
    def _owner(fd: int) -> Optional[dict]:
        """Who the lock file names, or None when it names no one readable (empty, garbage, no pid)."""
        try:
            doc = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int) or doc["pid"] <= 0:
            return None
        return doc

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # the holder may release (unlink) between our open and our flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                other = self._owner(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                who = (f"process {other.get('pid')} on host {other.get('host')} (started {other.get('started')})"
                       if other else "another process (which is still writing its lock)")
                raise RunLockedError(f"{self.path.parent} is in use by {who}; wait for it to finish, or choose "
                                     f"another out_dir") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                self._take_over(self._owner(fd), me)
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return
        raise RunLockedError(f"could not take the lock {self.path}; remove it if no run uses this directory")

    def _take_over(self, other: Optional[dict], me: dict) -> None:
        """We hold the flock: refuse a lock file naming a live process here, or another host unless forced."""
        if other is None:
            return
        pid = other["pid"]
        if other.get("host") == me["host"]:
            if pid != me["pid"] and _alive(pid):
                raise RunLockedError(f"{self.path.parent} is in use by process {pid} on this host (started "
                                     f"{other.get('started')}); wait for it to finish, or choose another out_dir")
            if pid != me["pid"]:
                self.log(f"fastdistill: taking over the lock of process {pid} (no longer running) in {self.path.parent}")
        elif not self.force:
            raise RunLockedError(f"{self.path.parent} is locked by process {pid} on host "
                                 f"{other.get('host')} (started {other.get('started')}); if that run is over, "
                                 f"take the lock with force=true (fastdistill distill --force)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # unlink while still holding the flock; a waiter that opened this file sees it gone and retries
            if os.fstat(self._fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None
