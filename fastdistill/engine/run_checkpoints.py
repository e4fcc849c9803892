"""A run's checkpoints as the training loop sees them: which one to resume, and the trained
state written and read in either layout, whole (safetensors files, rank 0) or sharded (every
rank's DCP shards under ``distributed.strategy=fsdp``). The files themselves, their checksums
and the atomic write are :mod:`.checkpoint`'s; reading shards is :mod:`.shards`'."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..methods import ConfigError
from . import checkpoint as ckpt
from . import distributed as D
from .shards import SHARDS_DIR, is_sharded, load_shards

__all__ = ["FORMAT", "Trained", "RunCheckpoints"]

#: the ``format`` of a distillation checkpoint's state.json
FORMAT = "fastdistill-distill/1"


@dataclass
class Trained:
    """What a run trains: the networks by checkpoint entry (``generator``, ``fake``, ``ema``) and the
    optimisers of the trained ones (``generator``, ``fake``), each the optimiser of that network."""

    networks: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]

    def whole_tensors(self) -> tuple[dict, dict]:
        """The whole layout: file stem -> tensors, and the optimisers' JSON-able param groups."""
        tensors = {name: net.state_dict() for name, net in self.networks.items()}
        flat, groups = {}, {}
        for name, opt in self.optimizers.items():
            moments, groups[name] = ckpt.optimizer_tensors(opt, name)
            flat.update(moments)
        return {**tensors, "optim": flat}, groups

    def sharded_state(self) -> dict:
        """DCP state dicts (DTensor shards under FSDP, keyed by parameter name, so DCP can re-shard
        them for another world size)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return {**{name: get_model_state_dict(net) for name, net in self.networks.items()},
                "optim": {name: get_optimizer_state_dict(self.networks[name], opt)
                          for name, opt in self.optimizers.items()}}


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

    def save(self, step: int, trained: Trained, record: Callable[[], dict],
             generators: dict[str, torch.Generator]) -> Optional[Path]:
        """Checkpoint ``step`` (collective: every rank gives its RNG states, and its shards when
        sharded; rank 0 writes the rest, the checksums, and renames it into place). ``record()``:
        the run's facts for state.json, asked on rank 0 only. Returns the path on rank 0; a failed
        write raises on every rank."""
        rngs = D.all_gather_object(ckpt.rng_state(generators))
        path = err = None
        tmp = self._write_shards(step, trained) if self.sharded else None
        if self.main:
            tensors, groups = ({}, None) if self.sharded else trained.whole_tensors()
            state = {"format": FORMAT, **record(), "step": step, "param_groups": groups, "layout": self.layout,
                     "world_size": self.world, "rng": rngs}
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
    def read(self, path: Path) -> tuple[dict, dict]:
        """(tensors, state) of a verified distillation checkpoint of this process's layout."""
        tensors, state = ckpt.load_checkpoint(path)
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: not a distillation checkpoint (format {state.get('format')!r})")
        layout = "sharded" if is_sharded(state) else "whole"
        if layout != self.layout:
            raise ConfigError(f"{path} is a {layout} checkpoint (distributed.strategy="
                              f"{'fsdp' if layout == 'sharded' else 'ddp'}); resume it with that strategy, or load "
                              f"its student (fastdistill.load_student) to start a new run from it")
        return tensors, state

    def restore(self, path: Path, tensors: dict, state: dict, trained: Trained,
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
                net.load_state_dict(tensors[name])
            for name, opt in trained.optimizers.items():
                ckpt.load_optimizer(opt, tensors["optim"], state["param_groups"][name], name)
        rngs = state["rng"]
        if len(rngs) == self.world:
            ckpt.set_rng_state(rngs[self.rank], generators)
        elif self.main:
            print(f"fastdistill: checkpoint written by {len(rngs)} ranks, resuming on {self.world}: RNG streams reseeded")
