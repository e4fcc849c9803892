"""Training checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of one checkpoint (a directory ``<out_dir>/checkpoints/step-00001234``):

    generator.safetensors  ema.safetensors  fake.safetensors   network weights (fp32 masters)
    optim.safetensors      Adam states, keys ``<net>.<param index>.<exp_avg|exp_avg_sq|step>``
    state.json             config, step, images seen, counters, Adam param groups and the
                           RNG states of every rank (torch CPU/CUDA, numpy, python, noise generators)

A checkpoint is first written to a hidden ``.tmp-`` directory (each file fsynced), then moved into
place with one ``os.replace``: a process killed mid-write leaves only a temporary directory,
which loading ignores and the next save removes. The last ``keep_last`` checkpoints are kept.
"""
from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CKPT_RE = re.compile(r"^step-(\d{8,})$")
STATE_FILE = "state.json"

#: test hook, called with the path of every file once it is written (to simulate a crash)
_after_file_written: Optional[Callable[[Path], None]] = None


def ckpt_root(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def check_writable(out_dir) -> None:
    """Fail early, with a clear message, when ``out_dir`` cannot hold checkpoints."""
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


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    if _after_file_written is not None:
        _after_file_written(path)


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def list_checkpoints(out_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = ckpt_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir) -> Optional[Path]:
    ck = list_checkpoints(out_dir)
    return ck[-1] if ck else None


def save_checkpoint(out_dir, step: int, tensors: dict[str, dict], state: dict, keep_last: int = 3) -> Path:
    """Write ``tensors`` (file stem -> flat dict of tensors) and ``state`` atomically; prune old ones."""
    root = ckpt_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left behind by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    tmp.mkdir()
    for stem, sd in tensors.items():
        path = tmp / f"{stem}.safetensors"
        save_file(_contiguous(sd), str(path))
        _fsync_file(path)
    path = tmp / STATE_FILE
    with open(path, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    if _after_file_written is not None:
        _after_file_written(path)
    _fsync_dir(tmp)
    if final.exists():
        old = root / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path) -> tuple[dict[str, dict], dict]:
    """Returns (file stem -> tensors, state dict) of a checkpoint directory."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete fastdistill checkpoint (no {STATE_FILE})")
    with open(path / STATE_FILE) as f:
        state = json.load(f)
    tensors = {p.stem: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    return tensors, state


# ---------------------------------------------------------------------- optimiser state
def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, list]:
    """Flatten an optimiser state into tensors + JSON-able param groups."""
    sd = opt.state_dict()
    flat = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            flat[f"{prefix}.{idx}.{k}"] = t
    return flat, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, flat: dict, groups: list, prefix: str) -> None:
    state: dict = {}
    for key, v in flat.items():
        if not key.startswith(prefix + "."):
            continue
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for g in groups:
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------- RNG states
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """This process's RNG states (global torch/CUDA/numpy/python plus named generators), JSON-able."""
    npst = np.random.get_state()
    py = random.getstate()
    out = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
        "python": [py[0], list(py[1]), py[2]],
        "generators": {k: _b64(g.get_state()) for k, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(st: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(_unb64(st["torch"]))
    n = st["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = st["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    for k, g in generators.items():
        if k in st["generators"]:
            g.set_state(_unb64(st["generators"][k]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in st["cuda"]])
