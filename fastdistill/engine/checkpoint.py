"""Training checkpoint files: safetensors for tensors, JSON for everything else, written
atomically and checksummed (what goes into them: :mod:`.run_checkpoints`).

Layout of one checkpoint (a directory ``<out_dir>/checkpoints/step-00001234``):

    generator.safetensors  ema.safetensors  fake.safetensors   network weights (fp32 masters; for
                           LoRA on the teacher's shared base, the adapters: state.json's
                           ``from_teacher`` names what the teacher holds)
    optim.safetensors      Adam states, keys ``<net>.<param index>.<exp_avg|exp_avg_sq|step>``
    state.json             config, step, images seen, counters, Adam param groups and the
                           RNG states of every rank (torch CPU/CUDA, numpy, python, noise generators)
    checksums.json         size and sha256 of every other file, written last

Tensor files are streamed tensor by tensor (:func:`.tensor_files.safetensors_chunks`), so a write
holds no copy of a whole file.

A sharded checkpoint (``distributed.strategy=fsdp``, ``"layout": "sharded"`` in state.json) has
no ``.safetensors``: networks, EMA and Adam states are a torch.distributed.checkpoint (DCP)
directory ``shards/`` (``.metadata`` plus one ``__<rank>_0.distcp`` per rank, keys
``generator.<param>``, ``fake.<param>``, ``ema.<param>``, ``optim.<net>.state.<param>.<moment>``),
which every rank writes into the same temporary directory (:func:`begin_checkpoint`) before rank 0
adds the rest; its files are checksummed and verified like the others. They are read only
through :mod:`.shards`, which executes nothing from them, and only when the verified
``state.json`` says the checkpoint is sharded.

A checkpoint is first written to a hidden ``.tmp-`` directory (each file fsynced, then
``checksums.json``), then moved into place with one ``os.replace``: a process killed mid-write
leaves only a temporary directory, which loading ignores and the next run or save removes.
Pruning (the last ``keep_last`` checkpoints up to the one just written are kept) first renames
a checkpoint to a temporary name, so a kill there leaves no half-deleted checkpoint either.
Temporaries carry their writer's pid and are removed only once that process is gone, and only by
the holder of the run's lock (a second launch refused by the lock touches nothing).

Loading verifies every file against ``checksums.json`` and raises :class:`CheckpointCorruptError`
(file and problem named) on a truncated file, a checksum mismatch, unreadable JSON, a missing
file, a file the checksums do not list, or a listed name outside the checkpoint. A checkpoint
written before checksums existed is loaded with a one-time warning that it cannot be verified;
one written with them but missing its ``checksums.json`` is refused (unless
``FASTDISTILL_ALLOW_UNVERIFIED=1``, a deliberate repair). :func:`latest_verified_checkpoint`
finds the newest intact checkpoint of a run and reports each newer one it skipped; :func:`resolve_checkpoint` does that
for a run directory and checks a named checkpoint directory. A failed write (disk full, I/O
error, permissions) removes its temporary directory and raises :class:`CheckpointWriteError`.

A test seam for fault injection: :data:`phase_hook`, when a test sets it, is called with the
phase and the file or checkpoint name at every point of :data:`WRITE_PHASES`: ``write`` (halfway
through each data file), ``checksums`` (halfway through ``checksums.json``), ``before-rename``,
``after-rename`` (the checkpoint is in place, not yet pruned) and ``prune`` (an old checkpoint
renamed away, not yet deleted). The SIGKILL tests install a hook there (tests/_faults.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

from safetensors.torch import load as _st_load

from ..teachers.checkpoint import CheckpointError
from .tensor_files import safetensors_chunks

__all__ = ["CheckpointCorruptError", "CheckpointWriteError", "CKPT_RE", "STATE_FILE", "CHECKSUMS_FILE",
           "WRITE_PHASES", "ckpt_root", "check_writable", "list_checkpoints", "latest_checkpoint",
           "latest_verified_checkpoint", "resolve_checkpoint", "verify_checkpoint", "save_checkpoint",
           "load_checkpoint", "begin_checkpoint", "remove_stale_temporaries"]

CKPT_RE = re.compile(r"^step-(\d{8,})$")
STATE_FILE = "state.json"
CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "fastdistill-checksums/1"
#: the state.json key of a checkpoint written with checksums: without its checksums.json it is refused
CHECKSUMS_KEY = "checksums"
#: set to 1 to load such a checkpoint unverified anyway (a deliberate repair)
ALLOW_UNVERIFIED_ENV = "FASTDISTILL_ALLOW_UNVERIFIED"
TMP_PREFIX = ".tmp-"

#: test seam, called with the path of every file once it is written (to simulate a crash)
_after_file_written: Optional[Callable[[Path], None]] = None

WRITE_PHASES = ("write", "checksums", "before-rename", "after-rename", "prune")
#: test seam, called as ``phase_hook(phase, name)`` at every point of :data:`WRITE_PHASES`
phase_hook: Optional[Callable[[str, str], None]] = None


class CheckpointCorruptError(CheckpointError, ValueError):
    """A checkpoint directory that cannot be used: a file truncated, failing its checksum,
    unreadable or missing. ``checkpoint`` (the directory), ``file`` (its name) and ``problem``
    say which and why; the message may add what to use instead."""

    def __init__(self, checkpoint, file: Optional[str], problem: str, hint: str = "", message: Optional[str] = None):
        self.checkpoint = Path(checkpoint)
        self.file = file
        self.problem = problem
        what = f"{file} {problem}" if file else problem
        super().__init__((message or f"checkpoint {self.checkpoint} is corrupt: {what}") + (f"; {hint}" if hint else ""))

    @property
    def reason(self) -> str:
        """``<file> <problem>``, without the checkpoint's path."""
        return f"{self.file} {self.problem}" if self.file else self.problem


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, I/O error, permissions); its temporary directory was
    removed and the older checkpoints are intact. ``checkpoint``: the directory that was not
    written; ``errno``: the cause's error number; the cause is chained (``__cause__``)."""

    def __init__(self, message: str, checkpoint=None, errno: Optional[int] = None):
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.errno = errno
        super().__init__(message)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fault_point(phase: str, what) -> None:
    if phase_hook is not None:
        phase_hook(phase, str(what))


# ---------------------------------------------------------------------- files
def ckpt_root(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def _writer_alive(tmp: Path) -> bool:
    """Whether the process whose pid ends a temporary's name (``.tmp-...-<pid>``) still runs."""
    pid = tmp.name.rpartition("-")[2]
    if not pid.isdigit() or int(pid) <= 0:
        return False
    if int(pid) == os.getpid():
        return False  # ours, left by a write of this process that failed
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(out_dir) -> list[Path]:
    """Remove the ``.tmp-*`` directories that killed or failed writers left in ``<out_dir>/checkpoints``
    (those of live processes are kept); returns what was removed. Call only while holding the run lock."""
    root = ckpt_root(out_dir)
    if not root.is_dir():
        return []
    stale = sorted(p for p in root.glob(TMP_PREFIX + "*") if p.is_dir() and not _writer_alive(p))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def check_writable(out_dir) -> None:
    """Fail early, with a clear message, when ``out_dir`` cannot hold checkpoints (touches nothing
    that is there: this runs before the run lock is taken)."""
    root = ckpt_root(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"output directory {out_dir!s} is not writable ({exc.strerror or exc}); "
                              f"choose another out_dir before training starts") from exc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, chunks: Iterable, size: int, phase: str = "write") -> dict:
    """Write the byte chunks (``size`` bytes in all) to a new file one after the other, fsync it, and
    return its size and sha256 (the fault point ``phase`` is halfway through)."""
    h, written, half, faulted = hashlib.sha256(), 0, size // 2, False
    with open(path, "xb") as f:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if not faulted and written + len(view) >= half:
                head, view = view[:half - written], view[half - written:]
                f.write(head)
                h.update(head)
                f.flush()
                _fault_point(phase, path.name)
                faulted, written = True, half
            f.write(view)
            h.update(view)
            written += len(view)
        f.flush()
        os.fsync(f.fileno())
    if _after_file_written is not None:
        _after_file_written(path)
    return {"size": written, "sha256": h.hexdigest()}


def _step_of(p: Path) -> int:
    return int(CKPT_RE.match(p.name).group(1))


def _candidates(out_dir) -> list[Path]:
    """Every ``step-*`` directory of a run, complete or not, oldest first."""
    root = ckpt_root(out_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if CKPT_RE.match(p.name) and p.is_dir()), key=_step_of)


def list_checkpoints(out_dir) -> list[Path]:
    """Checkpoint directories (with ``state.json`` or ``checksums.json``), oldest first; not verified."""
    return [p for p in _candidates(out_dir) if (p / STATE_FILE).is_file() or (p / CHECKSUMS_FILE).is_file()]


def latest_checkpoint(out_dir) -> Optional[Path]:
    """The newest checkpoint directory by name, not verified (see :func:`latest_verified_checkpoint`)."""
    ck = list_checkpoints(out_dir)
    return ck[-1] if ck else None


def begin_checkpoint(out_dir, step: int) -> Path:
    """The new, empty temporary directory of checkpoint ``step`` (stale ones, left by a killed
    writer, removed first): for shards that other processes write before :func:`save_checkpoint`."""
    root = ckpt_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    tmp = root / f"{TMP_PREFIX}step-{step:08d}-{os.getpid()}"
    tmp.mkdir()
    return tmp


def _file_sum(path: Path) -> dict:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def save_checkpoint(out_dir, step: int, tensors: dict[str, dict], state: dict, keep_last: int = 3,
                    tmp: Optional[Path] = None) -> Path:
    """Write ``tensors`` (file stem -> flat dict of tensors), ``state`` and their checksums atomically,
    then prune old checkpoints. ``tmp``: the :func:`begin_checkpoint` directory when it already holds
    files (shards), which are checksummed too. Raises :class:`CheckpointWriteError` when the write fails."""
    root = ckpt_root(out_dir)
    final = root / f"step-{step:08d}"
    current = None
    try:
        if tmp is None:
            tmp = begin_checkpoint(out_dir, step)
        sums = {p.relative_to(tmp).as_posix(): _file_sum(p) for p in sorted(tmp.rglob("*")) if p.is_file()}

        def put(name: str, chunks: Iterable, size: int, phase: str = "write") -> None:
            nonlocal current
            current = name
            written = _write_file(tmp / name, chunks, size, phase)
            if phase == "write":
                sums[name] = written

        def put_bytes(name: str, data: bytes, phase: str = "write") -> None:
            put(name, [data], len(data), phase)

        for stem, sd in tensors.items():  # streamed: one tensor at a time, never a whole file in memory
            put(f"{stem}.safetensors", *safetensors_chunks(sd))
        put_bytes(STATE_FILE, json.dumps({**state, CHECKSUMS_KEY: CHECKSUMS_FORMAT}).encode("utf-8"))
        put_bytes(CHECKSUMS_FILE, json.dumps({"format": CHECKSUMS_FORMAT, "files": sums}, indent=1).encode("utf-8"),
                  "checksums")
        current = None
        _fsync_dir(tmp)
        _fault_point("before-rename", final.name)
        _move_into_place(tmp, final)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            older = [p for p in list_checkpoints(out_dir) if _step_of(p) != step]
        except OSError:
            older = []
        intact = (f"the older checkpoints are intact (newest: {older[-1].name})" if older
                  else "no older checkpoint exists")
        cause = f"{exc.strerror or exc}" + (f" while writing {current}" if current else "")
        raise CheckpointWriteError(f"could not write checkpoint {final}: {cause}; its temporary files were "
                                   f"removed and {intact}", checkpoint=final, errno=exc.errno) from exc
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fault_point("after-rename", final.name)
    _prune(out_dir, step, keep_last)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final``; a checkpoint of the same step already there (Ctrl-C
    right after a periodic one) is set aside first and put back if the rename fails."""
    if final.exists():
        old = final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _prune(out_dir, step: int, keep_last: int) -> None:
    """Keep the checkpoint of ``step`` and the ``keep_last - 1`` before it; newer ones (from an
    earlier attempt this run resumed before) are left, to be overwritten when the run gets there."""
    root = ckpt_root(out_dir)
    older = [p for p in list_checkpoints(out_dir) if _step_of(p) < step]
    for old in older[:max(len(older) - (keep_last - 1), 0)]:
        gone = root / f"{TMP_PREFIX}prune-{old.name}-{os.getpid()}"
        try:
            os.replace(old, gone)
        except OSError:
            continue
        _fault_point("prune", old.name)
        shutil.rmtree(gone, ignore_errors=True)
    _fsync_dir(root)


# ---------------------------------------------------------------------- reading and verifying
_warned_unverified: set = set()


def _warn_unverified(path: Path, log: Optional[Callable[[str], None]]) -> None:
    key = str(path.resolve())
    if key in _warned_unverified:
        return
    _warned_unverified.add(key)
    (log or _stderr)(f"fastdistill: warning: checkpoint {path} has no {CHECKSUMS_FILE} (written by an older "
                     f"fastdistill); it cannot be verified")


def _read_checksums(path: Path) -> Optional[dict]:
    """``name -> {size, sha256}`` from ``checksums.json``; None for a checkpoint written without it."""
    f = path / CHECKSUMS_FILE
    if not f.is_file():
        if not (path / STATE_FILE).is_file():
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is not a fastdistill checkpoint directory")
            raise CheckpointCorruptError(path, STATE_FILE, "is missing")
        state = _parse(path, STATE_FILE, _read(path, STATE_FILE))
        if isinstance(state, dict) and state.get(CHECKSUMS_KEY) and os.environ.get(ALLOW_UNVERIFIED_ENV) != "1":
            raise CheckpointCorruptError(path, CHECKSUMS_FILE, f"is missing, though this checkpoint was written with "
                                         f"one, so it cannot be verified (to load it unverified, as a deliberate "
                                         f"repair: {ALLOW_UNVERIFIED_ENV}=1)")
        return None
    try:
        doc = json.loads(f.read_bytes().decode("utf-8"))
        files = doc["files"]
        if doc.get("format") != CHECKSUMS_FORMAT or not isinstance(files, dict) or STATE_FILE not in files:
            raise ValueError(f"not a {CHECKSUMS_FORMAT} record")
        sums = {str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in files.items()}
    except OSError as exc:
        raise CheckpointCorruptError(path, CHECKSUMS_FILE, f"cannot be read ({exc.strerror or exc})") from exc
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(path, CHECKSUMS_FILE, f"is unreadable ({exc})") from exc
    for name in sums:
        if not _confined(name):
            raise CheckpointCorruptError(path, CHECKSUMS_FILE, f"lists {name!r}, a path outside the checkpoint")
    entries = list(path.rglob("*"))
    for p in entries:
        if p.is_symlink():
            raise CheckpointCorruptError(path, p.relative_to(path).as_posix(), "is a symbolic link (a checkpoint "
                                         "holds plain files only)")
    present = {p.relative_to(path).as_posix() for p in entries if not p.is_dir()}
    unlisted = sorted(present - set(sums) - {CHECKSUMS_FILE})
    if unlisted:
        raise CheckpointCorruptError(path, unlisted[0], f"is not listed in {CHECKSUMS_FILE} (added after the "
                                     f"checkpoint was written{f'; {len(unlisted) - 1} more' if len(unlisted) > 1 else ''})")
    return sums


def _confined(name: str) -> bool:
    """A relative POSIX path of plain names below the checkpoint (no ``..``, no absolute path)."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)


def _check_bytes(path: Path, name: str, size: int, digest: str, expect: dict) -> None:
    if size < expect["size"]:
        raise CheckpointCorruptError(path, name, f"is truncated ({size} of {expect['size']} bytes)")
    if size != expect["size"]:
        raise CheckpointCorruptError(path, name, f"has the wrong size ({size} bytes, {expect['size']} expected)")
    if digest != expect["sha256"]:
        raise CheckpointCorruptError(path, name, f"has a checksum mismatch (sha256 {digest[:12]}..., "
                                                 f"{expect['sha256'][:12]}... recorded): the file was altered")


def _read(path: Path, name: str) -> bytes:
    try:
        return (path / name).read_bytes()
    except FileNotFoundError:
        raise CheckpointCorruptError(path, name, "is missing") from None
    except OSError as exc:
        raise CheckpointCorruptError(path, name, f"cannot be read ({exc.strerror or exc})") from exc


def _safetensors_problem(data: bytes, exc: Exception) -> str:
    """What is wrong with the bytes of a safetensors file that did not load."""
    if len(data) < 8:
        return f"is truncated ({len(data)} bytes, no safetensors header)"
    n = int.from_bytes(data[:8], "little")
    if len(data) < 8 + n:
        return f"is truncated ({len(data)} bytes, the header alone is {8 + n})"
    try:
        header = json.loads(data[8:8 + n])
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except Exception:
        return f"is not a valid safetensors file ({exc})"
    if len(data) < 8 + n + end:
        return f"is truncated ({len(data)} of {8 + n + end} bytes)"
    return f"is not a valid safetensors file ({exc})"


def _parse(path: Path, name: str, data: bytes):
    if name.endswith(".safetensors"):
        try:
            return _st_load(data)
        except Exception as exc:  # safetensors' SafetensorError (and whatever torch raises on odd dtypes)
            raise CheckpointCorruptError(path, name, _safetensors_problem(data, exc)) from exc
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(path, name, f"is unreadable JSON ({exc})") from exc


def verify_checkpoint(path, *, log: Optional[Callable[[str], None]] = None) -> bool:
    """Check a checkpoint directory against its ``checksums.json``; raises :class:`CheckpointCorruptError`.
    Returns True when verified, False for a checkpoint without checksums (then every file is only
    parsed, which catches truncation, and a one-time warning goes to ``log``, default stderr)."""
    path = Path(path)
    sums = _read_checksums(path)
    if sums is None:
        for name in [STATE_FILE] + sorted(p.name for p in path.glob("*.safetensors")):
            _parse(path, name, _read(path, name))
        _warn_unverified(path, log)
        return False
    for name, expect in sums.items():
        try:
            got = _file_sum(path / name)
        except FileNotFoundError:
            raise CheckpointCorruptError(path, name, "is missing") from None
        except OSError as exc:
            raise CheckpointCorruptError(path, name, f"cannot be read ({exc.strerror or exc})") from exc
        _check_bytes(path, name, got["size"], got["sha256"], expect)
    _check_state(path, _parse(path, STATE_FILE, _read(path, STATE_FILE)))
    return True


def _check_state(path: Path, state) -> dict:
    """``state.json`` is an object, and a ``step-N`` folder's state is at step N (a folder renamed
    to another step would otherwise win or lose every resume)."""
    if not isinstance(state, dict):
        raise CheckpointCorruptError(path, STATE_FILE, f"holds a JSON {type(state).__name__}, not an object")
    named = CKPT_RE.match(path.name)
    if named and "step" in state and state["step"] != int(named.group(1)):
        raise CheckpointCorruptError(path, STATE_FILE, f"records step {state['step']!r}, but the folder is named "
                                     f"{path.name} (renamed?)")
    return state


def load_checkpoint(path, *, log: Optional[Callable[[str], None]] = None) -> tuple[dict[str, dict], dict]:
    """Returns (file stem -> tensors, state dict) of a checkpoint directory, each file verified
    against ``checksums.json``. Raises :class:`CheckpointCorruptError` naming the checkpoint, the
    file and the problem; a checkpoint without checksums loads with a one-time warning to ``log``."""
    path = Path(path)
    sums = _read_checksums(path)
    if sums is None:
        names = [STATE_FILE] + sorted(p.name for p in path.glob("*.safetensors"))
    else:
        names = [STATE_FILE] + sorted(n for n in sums if n.endswith(".safetensors"))
    parsed = {}
    for name in names:
        data = _read(path, name)
        if sums is not None:
            _check_bytes(path, name, len(data), hashlib.sha256(data).hexdigest(), sums[name])
        parsed[name] = _parse(path, name, data)
    if sums is None:
        _warn_unverified(path, log)
    state = _check_state(path, parsed.pop(STATE_FILE))
    return {name[:-len(".safetensors")]: t for name, t in parsed.items()}, state


def latest_verified_checkpoint(out_dir, log: Optional[Callable[[str], None]] = None) -> Optional[Path]:
    """The newest checkpoint of the run directory ``out_dir`` that is complete and passes
    :func:`verify_checkpoint`; each newer one skipped is reported to ``log`` (default: stderr)
    with the reason. A checkpoint that vanishes while it is read (a live run pruned it after
    writing a newer one) is not corrupt: the folder is looked at again. None when the run has no
    checkpoint at all; raises :class:`CheckpointCorruptError` when it has some but none is intact."""
    log = log or _stderr
    for _ in range(5):  # each pass that sees a checkpoint vanish looks again
        skipped, vanished = [], False
        for p in reversed(_candidates(out_dir)):
            try:
                verify_checkpoint(p, log=log)
            except CheckpointCorruptError as exc:
                if not p.exists():
                    vanished = True
                    continue
                skipped.append(exc)
                log(f"fastdistill: skipped checkpoint {p}: {exc.reason}")
                continue
            if skipped:
                log(f"fastdistill: using checkpoint {p}, the newest intact one")
            return p
        if not vanished:
            break
    if skipped:
        first = skipped[0]
        raise CheckpointCorruptError(
            first.checkpoint, first.file, first.problem, hint="start over with resume=none or another out_dir",
            message=f"no intact checkpoint in {ckpt_root(out_dir)}: all {len(skipped)} are corrupt "
                    f"(the newest, {first.checkpoint.name}: {first.reason})")
    return None


def _is_checkpoint_dir(p: Path) -> bool:
    return (p / STATE_FILE).is_file() or (p / CHECKSUMS_FILE).is_file() or (
        bool(CKPT_RE.match(p.name)) and p.is_dir() and not ckpt_root(p).is_dir())


def resolve_checkpoint(path, log: Optional[Callable[[str], None]] = None) -> Path:
    """The checkpoint to load for ``path``: a run directory gives its newest intact checkpoint
    (:func:`latest_verified_checkpoint`, skipped ones reported to ``log``); a checkpoint directory
    is verified and returned. A named checkpoint that is corrupt raises :class:`CheckpointCorruptError`
    naming the newest intact one of its run as the alternative (never switched to silently);
    FileNotFoundError when there is no checkpoint."""
    p = Path(path)
    if _is_checkpoint_dir(p):
        try:
            verify_checkpoint(p, log=log)
        except CheckpointCorruptError as exc:
            run = p.parent.parent if p.parent.name == "checkpoints" else None
            alt = None
            if run is not None:
                try:
                    alt = latest_verified_checkpoint(run, log=lambda msg: None)
                except CheckpointCorruptError:
                    alt = None
            hint = (f"not switching to another one: the newest intact checkpoint of this run is {alt} "
                    f"(or name the run directory {run})" if alt is not None and alt != p
                    else "no intact checkpoint of this run is left")
            raise CheckpointCorruptError(exc.checkpoint, exc.file, exc.problem, hint=hint) from exc
        return p
    found = latest_verified_checkpoint(p, log=log)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {p}")
    return found
