"""A run's checkpoints as the training loop sees them: which one to resume, and the trained
state written and read in either layout, whole (safetensors files, rank 0) or sharded (every
rank's DCP shards under ``distributed.strategy=fsdp``). The files themselves, their checksums
and the atomic write are :mod:`.checkpoint`'s; reading shards is :mod:`.shards`'."""
from __future__ import annotations

import base64
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..methods import ConfigError
from . import checkpoint as ckpt
from . import distributed as D
from .run_state import RunState
from .shards import SHARDS_DIR, load_shards

__all__ = ["Trained", "RunCheckpoints", "optimizer_tensors", "load_optimizer", "rng_state", "set_rng_state"]


@dataclass
class Trained:
    """What a run trains: the networks by checkpoint entry (``generator``, ``fake``, ``ema``) and the
    optimisers of the trained ones (``generator``, ``fake``), each the optimiser of that network."""

    networks: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    scaler: Optional[torch.amp.GradScaler] = None  # fp16's loss scale
    #: per network, the entries that are the teacher's own frozen weights (``lora.share_base``): not
    #: written, since the teacher whose hash the run's identity records holds them
    from_teacher: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def whole_tensors(self) -> tuple[dict, dict]:
        """The whole layout: file stem -> tensors, and the optimisers' JSON-able param groups."""
        tensors = {name: _without(net.state_dict(), self.from_teacher.get(name, ())) for name, net in self.networks.items()}
        flat, groups = {}, {}
        for name, opt in self.optimizers.items():
            moments, groups[name] = optimizer_tensors(opt, name)
            flat.update(moments)
        return {**tensors, "optim": flat}, groups

    def sharded_state(self) -> dict:
        """DCP state dicts (DTensor shards under FSDP, keyed by parameter name, so DCP can re-shard
        them for another world size)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return {**{name: get_model_state_dict(net) for name, net in self.networks.items()},
                "optim": {name: get_optimizer_state_dict(self.networks[name], opt)
                          for name, opt in self.optimizers.items()}}


def _without(state: dict, names) -> dict:
    names = set(names)
    return {k: v for k, v in state.items() if k not in names}


def load_network(net: torch.nn.Module, tensors: dict, from_teacher, what: str) -> None:
    """``tensors`` into ``net``, which must already hold the entries ``from_teacher`` (the teacher's
    own weights, not in a checkpoint of a shared-base run); anything else missing or extra is an
    error naming ``what``."""
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    absent = sorted(set(missing) - set(from_teacher))
    if absent or unexpected:
        raise ckpt.CheckpointError(f"{what} does not fit the network: " + "; ".join(
            part for part in (f"missing {', '.join(absent[:5])}" if absent else "",
                              f"unexpected {', '.join(unexpected[:5])}" if unexpected else "") if part))


class RunCheckpoints:
    """The checkpoints of the run in ``out_dir``; ``sharded``: the layout this process writes and
    resumes; collective methods say so (every rank calls them)."""

    def __init__(self, out_dir: Path, keep_last: int, *, sharded: bool, main: bool, rank: int, world: int):
        self.out_dir, self.keep_last = Path(out_dir), keep_last
        self.sharded, self.main, self.rank, self.world = sharded, main, rank, world

    @property
    def layout(self) -> str:
        return "sharded" if self.sharded else "whole"

    def _log(self) -> Optional[Callable[[str], None]]:
        """Where skipped (corrupt) checkpoints are reported: stderr on rank 0, nowhere on the others."""
        return None if self.main else (lambda msg: None)

    def find(self, resume: str) -> Optional[Path]:
        """The checkpoint ``resume`` (``none``, ``auto``, or a path) names; ``none`` refuses a run
        folder that already holds checkpoints."""
        if resume == "none":
            existing = ckpt.list_checkpoints(self.out_dir) if self.main else []
            if existing:
                raise ConfigError(f"resume=none, but {self.out_dir} already holds checkpoints (up to {existing[-1].name}) "
                                  f"of a run: continue it with resume=auto, or start the new run in another out_dir")
            return None
        if resume == "auto":
            return ckpt.latest_verified_checkpoint(self.out_dir, log=self._log())
        try:  # a checkpoint directory (verified; a corrupt one is an error) or a run directory
            return ckpt.resolve_checkpoint(resume, log=self._log())
        except FileNotFoundError:
            raise FileNotFoundError(f"resume={resume!r}: no complete checkpoint found there") from None

    def last_good(self) -> Optional[Path]:
        """The newest intact checkpoint, or None (also when every one is corrupt)."""
        try:
            return ckpt.latest_verified_checkpoint(self.out_dir, log=self._log())
        except ckpt.CheckpointCorruptError:
            return None

    # ------------------------------------------------------------------ writing
    def _write_shards(self, step: int, trained: Trained) -> Path:
        """Every rank writes its shards into the checkpoint's temporary directory, which rank 0 made."""
        import torch.distributed.checkpoint as dcp

        made = err = None
        if self.main:
            try:
                made = str(ckpt.begin_checkpoint(self.out_dir, step))
            except OSError as exc:
                err = f"could not write checkpoint step {step} in {self.out_dir}: {exc.strerror or exc}"
        made, err = D.broadcast_object((made, err))
        if err:
            raise ckpt.CheckpointWriteError(err)
        tmp = Path(made)
        dcp.save(trained.sharded_state(), checkpoint_id=tmp / SHARDS_DIR)
        D.barrier()
        return tmp

    def save(self, step: int, trained: Trained, record: Callable[[], RunState],
             generators: dict[str, torch.Generator]) -> Optional[Path]:
        """Checkpoint ``step`` (collective: every rank gives its RNG states, and its shards when
        sharded; rank 0 writes the rest, the checksums, and renames it into place). ``record()``:
        the run's state, asked on rank 0 only; the optimisers' groups, the loss scale, the entries
        left to the teacher, the layout, the world size and the RNG states are filled in here.
        Returns the path on rank 0; a failed write raises on every rank."""
        rngs = D.all_gather_object(rng_state(generators))
        path = err = None
        tmp = self._write_shards(step, trained) if self.sharded else None
        if self.main:
            tensors, groups = ({}, None) if self.sharded else trained.whole_tensors()
            scaler = trained.scaler.state_dict() if trained.scaler is not None else None
            state = dataclasses.replace(record(), step=step, param_groups=groups, layout=self.layout,
                                        world_size=self.world, rng=rngs, scaler=scaler,
                                        from_teacher=trained.from_teacher).to_dict()
            try:
                path = ckpt.save_checkpoint(self.out_dir, step, tensors, state, self.keep_last, tmp=tmp)
            except ckpt.CheckpointWriteError as exc:
                err = exc
        msg = D.broadcast_object(None if err is None else str(err))  # a failed write stops every rank
        if msg:
            raise err if err is not None else ckpt.CheckpointWriteError(msg)
        D.barrier()
        return path

    # ------------------------------------------------------------------ reading
    def read(self, path: Path) -> tuple[dict, RunState]:
        """(tensors, state) of a verified distillation checkpoint of this process's layout."""
        tensors, raw = ckpt.load_checkpoint(path)
        state = RunState.from_dict(raw, path)
        layout = state.layout
        if layout != self.layout:
            raise ConfigError(f"{path} is a {layout} checkpoint (distributed.strategy="
                              f"{'fsdp' if layout == 'sharded' else 'ddp'}); resume it with that strategy, or load "
                              f"its student (fastdistill.load_student) to start a new run from it")
        return tensors, state

    def restore(self, path: Path, tensors: dict, state: RunState, trained: Trained,
                generators: dict[str, torch.Generator]) -> None:
        """Load what :meth:`read` returned into ``trained`` and ``generators`` (collective when sharded:
        each rank reads its shards; DCP re-shards a checkpoint of another world size)."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

            sd = trained.sharded_state()
            load_shards(sd, path)
            for name, net in trained.networks.items():
                set_model_state_dict(net, sd[name])
            for name, opt in trained.optimizers.items():
                set_optimizer_state_dict(trained.networks[name], opt, sd["optim"][name])
        else:
            for name, net in trained.networks.items():
                load_network(net, tensors[name], state.from_teacher.get(name, ()), f"{path}: its {name}")
            for name, opt in trained.optimizers.items():
                load_optimizer(opt, tensors["optim"], state.param_groups[name], name)
        if trained.scaler is not None and state.scaler:
            trained.scaler.load_state_dict(state.scaler)
        rngs = state.rng
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank], generators)
        elif self.main:
            print(f"fastdistill: checkpoint written by {len(rngs)} ranks, resuming on {self.world}: RNG streams reseeded")


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
    # checkpoints store contiguous tensors; moments laid out unlike their parameter (channels_last)
    # would be read in the wrong order by the fused Adam kernels
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


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
